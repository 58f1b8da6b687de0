"""Read topics to their true end, once or for good: the one reader of metergate (no consumer group).

Every reader of a topic "from here to the end" uses this module: the compacted views (entitlement
snapshots in rating, the catalog in metering, the entitlement state), metering's recovery of its
changelog and outputs, the demo's and the tests' reads of a topic, the benchmark's ceiling. A
`TopicFollower` reads whole topics from the beginning, or given (topic, partition, start offset)
triples; nothing is committed and no group is joined (the group id is random and never used for
offsets), so a new instance needs no rebalance and each holds the whole state.

- continuous: `follower.start()` runs it on its own thread (`stop()` ends it); a consumer with a
  loop of its own calls `follower.poll(timeout_s)` between its batches instead. Records reach
  `on_records` in partition order, on the thread that polls.
- one-shot: `read_partitions()` (records of given partitions from given offsets, per partition) and
  `read_topic()` (every record of a topic) read to the true end and return; both are a follower
  driven by `catch_up()`.

**The true end.** "Caught up" must not trust end offsets alone: the embedded broker (tansu) answers
ListOffsets "latest" with the base offset of the newest record batch + 1, short of that batch's
other records (Faust's own recovery trusts it and drops a changelog's tail). So a reader takes the
high watermark of every partition, and is caught up once (1) every partition's position has reached
that watermark (the newest batch has then been fetched, whole) and (2) no record arrived for
`idle_s`. On Apache Kafka (1) is exact and (2) only costs `idle_s`. Positions are the consumer's
own (`Consumer.position`: the offset after the last record handed over), so a gap in the offsets
(compaction, transaction markers) does not keep a partition "behind".

While following, the follower probes the watermarks every `probe_interval_s` (one ListOffsets per
partition, `probe_timeout_s` each): `last_contact` is the wall time of the last probe the broker
answered and `as_of` the wall time of the last probe that found every partition read to its
watermark, i.e. the moment up to which the local state is known to reflect the topics. A paused or
unreachable broker stops both from moving; readers decide from them when their state is stale.
`wait_current()` (any thread) waits for such a probe started after the call.

**A record the owner cannot apply** (undecodable bytes, an invalid record: `InvalidInput`) is
handled one way, by `apply_each()`: one WARNING line naming the reader, topic, partition, offset and
reason; one count in `metergate_follower_records_skipped_total{reader,topic,reason}`; the owner's
`on_reject(message, error)` if it has one (rating sends the record to usage.dlq); then the next
record. It never stops the reader. A fault of ours (any other exception) stops a threaded follower
and is raised by `wait_current()`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, Message, TopicPartition
from prometheus_client import Counter

from metergate.errors import InvalidInput

log = logging.getLogger(__name__)

OnRecords = Callable[[list[Message]], None]
OnReject = Callable[[Message, InvalidInput], None]
#: (key, value, offset) of one record of a partition
Record = tuple[bytes | None, bytes | None, int]

SKIPPED = Counter(
    "metergate_follower_records_skipped_total",
    "Records a topic reader could not apply and skipped (logged, and handed to the owner's on_reject)",
    ["reader", "topic", "reason"],
)


def apply_each(
    reader: str,
    messages: Iterable[Message],
    apply: Callable[[Message], object],
    on_reject: OnReject | None = None,
) -> int:
    """`apply` each record; one that raises `InvalidInput` is skipped by the policy above.

    Returns how many were applied."""
    applied = 0
    for message in messages:
        try:
            apply(message)
        except InvalidInput as exc:
            topic = message.topic() or ""
            SKIPPED.labels(reader, topic, exc.reason).inc()
            log.warning(
                "%s: skipped %s[%s]@%s: %s: %s",
                reader,
                topic,
                message.partition(),
                message.offset(),
                exc.reason,
                exc,
            )
            if on_reject is not None:
                on_reject(message, exc)
        else:
            applied += 1
    return applied


class TopicFollower:
    def __init__(
        self,
        client_config: Mapping[str, Any],
        topics: Sequence[str],
        on_records: OnRecords,
        *,
        partitions: Sequence[tuple[str, int, int]] | None = None,
        name: str = "follower",
        batch_size: int = 10_000,
        poll_timeout_s: float = 0.05,
        idle_s: float = 0.25,
        probe_interval_s: float = 0.5,
        probe_timeout_s: float = 1.0,
        retry_s: float = 0.5,
        clock: Callable[[], float] = time.time,
        consumer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        """Follow every partition of `topics` from the beginning, or exactly `partitions` as
        (topic, partition, start offset)."""
        self.topics = (
            tuple(topics) if partitions is None else tuple(dict.fromkeys(t for t, _, _ in partitions))
        )
        self.name = name
        self._on_records = on_records
        self._explicit = None if partitions is None else list(partitions)
        self._config = {
            **client_config,
            "group.id": f"metergate-{name}-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 20,
            "socket.timeout.ms": 10_000,
            **(consumer_overrides or {}),
        }
        self._batch_size = batch_size
        self._poll_timeout_s = poll_timeout_s
        self._idle_s = idle_s
        self._probe_interval_s = probe_interval_s
        self._probe_timeout_s = probe_timeout_s
        self._retry_s = retry_s
        self._clock = clock
        self._consumer: Consumer | None = None
        # watermark queries go through a client of their own: on the reading client they queue
        # behind its fetch, which the embedded broker holds for the full fetch.wait.max.ms
        self._prober: Consumer | None = None
        self._partitions: list[TopicPartition] = []
        self._targets: dict[tuple[str, int], int] = {}  # start-up watermarks still to reach
        self._positions: dict[tuple[str, int], int] = {}  # next offset to read, per partition
        self._last_record = 0.0
        self._last_batch_full = False
        self._next_probe = 0.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._current = threading.Condition()
        self._current_at = -math.inf  # monotonic start of the last probe that found every partition read
        self._waiting = 0  # threads in wait_current(): probe on every poll while there are any
        self.caught_up = threading.Event()
        self.records = 0
        self.last_contact: float | None = None
        self.as_of: float | None = None
        self.failure: BaseException | None = None

    # -- running -----------------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self._thread

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                self.poll(self._poll_timeout_s)
        except BaseException as exc:  # a fault of ours: raised again by wait_current()
            self.failure = exc
            with self._current:
                self._current.notify_all()
            raise
        finally:
            self.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
            self._thread = None

    def close(self) -> None:
        """Close the consumer (a follower polled by its owner; a threaded one closes on `stop()`)."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._prober is not None:
            self._prober.close()
            self._prober = None

    def wait_caught_up(self, timeout_s: float) -> bool:
        return self.caught_up.wait(timeout_s)

    def wait_current(self, timeout_s: float) -> bool:
        """Wait (any thread; the follower runs on its own) until a probe started after this call
        finds every partition read to its watermark; False at `timeout_s`."""
        asked = time.monotonic()
        deadline = asked + timeout_s
        with self._current:
            self._waiting += 1
            try:
                while self._current_at < asked:
                    if self.failure is not None:
                        raise RuntimeError(f"{self.name} stopped") from self.failure
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._current.wait(remaining)
                return True
            finally:
                self._waiting -= 1

    def poll(self, timeout_s: float = 0.0) -> int:
        """One step: assign (first time), read one batch and hand it over, probe when due."""
        if self._consumer is None and not self._assign():
            self._stopping.wait(self._retry_s)
            return 0
        consumer = self._consumer
        assert consumer is not None
        messages = consumer.consume(self._batch_size, timeout=timeout_s)
        now = time.monotonic()
        self._last_batch_full = len(messages) >= self._batch_size
        good = [message for message in messages if message.error() is None]
        if len(good) < len(messages):
            for message in messages:
                if message.error() is not None:
                    log.warning("%s: %s", self.name, message.error())
        if messages:
            for tp in consumer.position(self._partitions):
                if tp.offset >= 0:
                    self._positions[(tp.topic, tp.partition)] = tp.offset
        if good:
            self._last_record = now
            self.records += len(good)
            self._on_records(good)
        if not self.caught_up.is_set():
            self._check_caught_up(now)
        if now >= self._next_probe or (self._waiting and self.caught_up.is_set()):
            self._next_probe = now + self._probe_interval_s
            self._probe()
        return len(good)

    def catch_up(self, timeout_s: float, *, idle_s: float | None = None, min_records: int = 0) -> bool:
        """Poll (on the calling thread: not for a started follower) until every partition is read
        to the watermark it has now, no record came for `idle_s` (default: the follower's) and at
        least `min_records` were read by this call; False at `timeout_s`."""
        idle = self._idle_s if idle_s is None else idle_s
        started = time.monotonic()
        deadline = started + timeout_s
        targets: dict[tuple[str, int], int] | None = None
        first = self.records
        fresh = self._consumer is None  # assigned by this call: its watermarks are the targets
        while True:
            if self._consumer is not None and targets is None:
                targets = (
                    dict(self._targets)
                    if fresh
                    else self._watermarks(
                        min(self._probe_timeout_s * 5, max(deadline - time.monotonic(), 0.1))
                    )
                )
            self.poll(max(min(self._poll_timeout_s, deadline - time.monotonic()), 0.0))
            now = time.monotonic()
            if (
                targets is not None
                and self._reached(targets)
                and not self._last_batch_full
                and now - max(started, self._last_record) >= idle
                and self.records - first >= min_records
            ):
                return True
            if now >= deadline:
                return False

    # -- internals ---------------------------------------------------------------------------------
    def _assign(self) -> bool:
        consumer = Consumer(dict(self._config))
        prober = Consumer({**self._config, "group.id": f"{self._config['group.id']}-probe"})
        try:
            if self._explicit is not None:
                partitions = [TopicPartition(t, p, start) for t, p, start in self._explicit]
            else:
                partitions = []
                for topic in self.topics:
                    metadata = consumer.list_topics(topic, timeout=self._probe_timeout_s * 5)
                    described = metadata.topics.get(topic)
                    if described is None or described.error is not None or not described.partitions:
                        raise KafkaException(f"topic {topic} not found")
                    partitions += [
                        TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(described.partitions)
                    ]
            consumer.assign(partitions)  # fetching starts while the watermarks are asked for
            targets = high_watermarks(prober, partitions, self._probe_timeout_s * 5)
        except KafkaException as exc:
            log.warning("%s: cannot read %s yet (%s); retrying", self.name, ",".join(self.topics), exc)
            consumer.close()
            prober.close()
            return False
        self._consumer = consumer
        self._prober = prober
        self._partitions = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        self._positions = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in partitions}
        self._targets = targets
        self._last_record = time.monotonic()
        self._next_probe = self._last_record + self._probe_interval_s  # the watermarks were just read
        self.last_contact = self._clock()
        log.info("%s: following %d partitions of %s", self.name, len(partitions), ",".join(self.topics))
        return True

    def _reached(self, targets: Mapping[tuple[str, int], int]) -> bool:
        return all(self._positions.get(key, 0) >= high for key, high in targets.items())

    def _watermarks(self, timeout_s: float) -> dict[tuple[str, int], int] | None:
        prober = self._prober
        if prober is None:
            return None
        try:
            return high_watermarks(prober, self._partitions, timeout_s)
        except KafkaException as exc:
            log.debug("%s: broker did not answer the watermark query: %s", self.name, exc)
            return None

    def _check_caught_up(self, now: float) -> None:
        if not self._reached(self._targets) or self._last_batch_full:
            return
        if now - self._last_record >= self._idle_s:
            self.as_of = self._clock()
            self.caught_up.set()
            log.info("%s: caught up (%d records)", self.name, self.records)

    def _probe(self) -> None:
        """Watermarks now; while a thread waits in wait_current() (and the start-up catch-up is
        done), once per poll."""
        started, started_mono = self._clock(), time.monotonic()
        highs = self._watermarks(self._probe_timeout_s)
        if highs is None:
            return
        self.last_contact = started
        if self._reached(highs) and not self._last_batch_full and self.caught_up.is_set():
            self.as_of = started
            with self._current:
                self._current_at = started_mono
                self._current.notify_all()


def high_watermarks(
    consumer: Consumer, partitions: Iterable[TopicPartition], timeout_s: float
) -> dict[tuple[str, int], int]:
    """Every partition's high watermark in one ListOffsets(latest) request (timestamp OFFSET_END:
    the same figure as get_watermark_offsets, which asks one partition per round trip, ~20 ms each
    on the embedded broker). Raises KafkaException when the broker does not answer."""
    answers = consumer.offsets_for_times(
        [TopicPartition(tp.topic, tp.partition, OFFSET_END) for tp in partitions], timeout=timeout_s
    )
    found = {}
    for answer in answers:
        if answer.error is not None:
            raise KafkaException(answer.error)
        found[(answer.topic, answer.partition)] = answer.offset
    return found


def read_partitions(
    client_config: Mapping[str, Any],
    assignments: Sequence[tuple[str, int, int]],
    *,
    idle_s: float,
    timeout_s: float = 120.0,
    name: str = "reader",
) -> dict[tuple[str, int], list[Record]]:
    """Each (topic, partition, start offset) read to its TRUE end: (key, value, offset) per partition.

    Raises TimeoutError when the end is not reached within `timeout_s`."""
    found: dict[tuple[str, int], list[Record]] = {
        (topic, partition): [] for topic, partition, _ in assignments
    }
    if not assignments:
        return found

    def collect(messages: list[Message]) -> None:
        for message in messages:
            found[(message.topic() or "", message.partition() or 0)].append(
                (message.key(), message.value(), message.offset() or 0)
            )

    follower = TopicFollower(
        client_config,
        (),
        collect,
        partitions=assignments,
        name=name,
        batch_size=5_000,
        idle_s=idle_s,
        probe_interval_s=math.inf,
        consumer_overrides={"fetch.wait.max.ms": 50},
    )
    try:
        if not follower.catch_up(timeout_s):
            raise TimeoutError(f"could not read {sorted(found)} to their end within {timeout_s}s")
    finally:
        follower.close()
    return found


def read_topic(
    client_config: Mapping[str, Any],
    topic: str,
    *,
    expect: int | None = None,
    idle_s: float = 2.0,
    timeout_s: float = 60.0,
) -> list[tuple[bytes | None, bytes | None, int, int]]:
    """Every record of `topic` as (key, value, partition, offset), read from the beginning to its
    true end (and, with `expect`, until that many were read).

    Returns what was read at `timeout_s` if the end (or `expect`) is not reached by then: a caller
    that counts records sees the shortfall."""
    records: list[tuple[bytes | None, bytes | None, int, int]] = []

    def collect(messages: list[Message]) -> None:
        records.extend((m.key(), m.value(), m.partition() or 0, m.offset() or 0) for m in messages)

    follower = TopicFollower(
        client_config, [topic], collect, name=f"read-{topic}", idle_s=idle_s, probe_interval_s=math.inf
    )
    try:
        follower.catch_up(timeout_s, min_records=expect or 0)
    finally:
        follower.close()
    return records
