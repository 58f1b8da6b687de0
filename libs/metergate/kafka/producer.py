"""confluent-kafka producers with the settings metergate relies on, and delivery failures surfaced.

Idempotent (`enable.idempotence`, which implies acks=all and bounded in-flight requests), so a
retried send never writes a record twice and never reorders a partition. Works on Apache Kafka and
on the embedded tansu broker (which accepts librdkafka's InitProducerId, unlike aiokafka's).

Sending is one shape everywhere: `produce()` each record with a `DeliveryTracker` as its delivery
callback, then `flush()`, which waits for the acknowledgements and raises `DeliveryError` (naming the
topic and the reason) for a record the broker refused or one still unacknowledged at the timeout.
`send()` does the three for a batch of records to one topic.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from metergate.errors import DeliveryError
from metergate.kafka.partitioner import LIBRDKAFKA_PARTITIONER

PRODUCER_DEFAULTS: dict[str, Any] = {
    # the one partitioner of keyed records (metergate.kafka.partitioner): a customer's records land
    # where the metering worker counts them, whichever metergate tool sends them
    "partitioner": LIBRDKAFKA_PARTITIONER,
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "batch.num.messages": 10000,
    "queue.buffering.max.messages": 500000,
    "message.timeout.ms": 120000,
}


def make_producer(client_config: Mapping[str, Any], **overrides: Any) -> Producer:
    return Producer({**client_config, **PRODUCER_DEFAULTS, **overrides})


class DeliveryTracker:
    """Counts deliveries and keeps failures; `raise_failures()` turns them into a DeliveryError.
    `positions` holds, per (topic, partition), the highest offset delivered (a caller that stores
    where its outputs end, as metering's commit order does)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.delivered = 0
        self.failures: list[tuple[str, str, KafkaError]] = []  # (topic, key, error)
        self.positions: dict[tuple[str, int], int] = {}

    def __call__(self, error: KafkaError | None, message: Message) -> None:
        with self._lock:
            if error is None:
                self.delivered += 1
                where = (message.topic() or "", message.partition() or 0)
                offset = message.offset() or 0
                if offset > self.positions.get(where, -1):
                    self.positions[where] = offset
            else:
                key = message.key()
                self.failures.append(
                    (message.topic() or "", key.decode(errors="replace") if key else "", error)
                )

    def raise_failures(self) -> None:
        with self._lock:
            if not self.failures:
                return
            count = len(self.failures)
            topic, key, first = self.failures[0]
            self.failures = []
        raise DeliveryError(
            f"{count} record(s) not delivered; first to {topic} (key {key!r}): {first.str()}",
            topic=topic,
            reason=first.str(),
        )


def produce(
    producer: Producer,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    tracker: DeliveryTracker,
    *,
    partition: int | None = None,
    headers: list[tuple[str, str | bytes | None]] | None = None,
) -> None:
    """Produce one record (to `partition`, or where the partitioner puts its key), waiting for
    queue space instead of failing when the local queue is full."""
    extra: dict[str, Any] = {}
    if partition is not None:
        extra["partition"] = partition
    if headers is not None:
        extra["headers"] = headers
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=tracker, **extra)
            return
        except BufferError:
            producer.poll(0.05)


def flush(
    producer: Producer, tracker: DeliveryTracker, *, topic: str | Sequence[str], timeout_s: float
) -> None:
    """Wait until every record produced with `tracker` is acknowledged.

    Raises DeliveryError for a record the broker refused (its topic, key and reason), or when
    records to `topic` (what the caller sent to) are still unacknowledged after `timeout_s`."""
    remaining = producer.flush(timeout_s)
    tracker.raise_failures()
    if remaining:
        names = topic if isinstance(topic, str) else ", ".join(topic)
        raise DeliveryError(
            f"{remaining} record(s) to {names} unacknowledged after {timeout_s} s "
            "(is the broker reachable and the topic there?)",
            topic=names,
            reason="timeout",
        )


def send(
    producer: Producer,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    *,
    timeout_s: float = 30.0,
    tracker: DeliveryTracker | None = None,
) -> int:
    """Produce every (key, value) to `topic`, flush, raise as `flush()` does; returns how many."""
    tracker = tracker if tracker is not None else DeliveryTracker()
    count = 0
    for key, value in records:
        produce(producer, topic, key, value, tracker)
        count += 1
    flush(producer, tracker, topic=topic, timeout_s=timeout_s)
    return count
