"""Read topics from the beginning to their true end, then keep following them (no consumer group).

The one mechanism for tailing a compacted topic into local state (entitlement snapshots, usage
aggregates, limit events, ...). Every instance reads every partition itself: nothing is committed,
no group is joined (the group id is random and never used for offsets), so a new instance needs no
rebalance and each holds the whole state.

"Caught up" must not trust end offsets alone: the embedded broker (tansu) answers ListOffsets
"latest" with the base offset of the newest record batch + 1, short of that batch's other records.
So the follower takes the high watermark of every partition when it is assigned, and is caught up
once (1) every partition's position has reached that watermark (the newest batch has then been
fetched, whole) and (2) no record arrived for `idle_s`. On Apache Kafka (1) is exact and (2) only
costs `idle_s` once at start.

While following, the follower probes the watermarks every `probe_interval_s` (one ListOffsets per
partition, `probe_timeout_s` each): `last_contact` is the wall time of the last probe the broker
answered and `as_of` the wall time of the last probe that found every partition read to its
watermark, i.e. the moment up to which the local state is known to reflect the topics. A paused or
unreachable broker stops both from moving; readers decide from them when their state is stale.

Use: `follower.start()` runs it on its own thread (`stop()` ends it); a consumer with a loop of its
own calls `follower.poll(timeout_s)` between its batches instead. Records reach `on_records` in
partition order, on the thread that polls.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, Message, TopicPartition

log = logging.getLogger(__name__)

OnRecords = Callable[[list[Message]], None]


class TopicFollower:
    def __init__(
        self,
        client_config: Mapping[str, Any],
        topics: Sequence[str],
        on_records: OnRecords,
        *,
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
        self.topics = tuple(topics)
        self.name = name
        self._on_records = on_records
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
        self._partitions: list[TopicPartition] = []
        self._targets: dict[tuple[str, int], int] = {}  # start-up watermarks still to reach
        self._positions: dict[tuple[str, int], int] = {}  # next offset to read, per partition
        self._last_record = 0.0
        self._next_probe = 0.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.caught_up = threading.Event()
        self.records = 0
        self.last_contact: float | None = None
        self.as_of: float | None = None

    # -- running -----------------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self._thread

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                self.poll(self._poll_timeout_s)
        finally:
            self._close()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
            self._thread = None

    def wait_caught_up(self, timeout_s: float) -> bool:
        return self.caught_up.wait(timeout_s)

    def poll(self, timeout_s: float = 0.0) -> int:
        """One step: assign (first time), read one batch and hand it over, probe when due."""
        if self._consumer is None and not self._assign():
            self._stopping.wait(self._retry_s)
            return 0
        consumer = self._consumer
        assert consumer is not None
        messages = consumer.consume(self._batch_size, timeout=timeout_s)
        now = time.monotonic()
        good = []
        for message in messages:
            error = message.error()
            if error is not None:
                log.warning("%s: %s", self.name, error)
                continue
            good.append(message)
            partition, offset = message.partition(), message.offset()
            if partition is not None and offset is not None:
                self._positions[(message.topic() or "", partition)] = offset + 1
        if good:
            self._last_record = now
            self.records += len(good)
            self._on_records(good)
        if not self.caught_up.is_set():
            self._check_caught_up(now)
        if now >= self._next_probe:
            self._next_probe = now + self._probe_interval_s
            self._probe()
        return len(good)

    # -- internals ---------------------------------------------------------------------------------
    def _assign(self) -> bool:
        consumer = Consumer(dict(self._config))
        try:
            partitions: list[TopicPartition] = []
            for topic in self.topics:
                metadata = consumer.list_topics(topic, timeout=self._probe_timeout_s * 5)
                described = metadata.topics.get(topic)
                if described is None or described.error is not None or not described.partitions:
                    raise KafkaException(f"topic {topic} not found")
                partitions += [
                    TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(described.partitions)
                ]
            targets = {}
            for tp in partitions:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=self._probe_timeout_s * 5, cached=False
                )
                targets[(tp.topic, tp.partition)] = high
        except KafkaException as exc:
            log.warning("%s: cannot read %s yet (%s); retrying", self.name, ",".join(self.topics), exc)
            consumer.close()
            return False
        consumer.assign(partitions)
        self._consumer = consumer
        self._partitions = partitions
        self._targets = {key: high for key, high in targets.items() if high > 0}
        self._positions = dict.fromkeys(targets, 0)
        self._last_record = time.monotonic()
        self.last_contact = self._clock()
        log.info("%s: following %d partitions of %s", self.name, len(partitions), ",".join(self.topics))
        return True

    def _check_caught_up(self, now: float) -> None:
        if any(self._positions.get(key, 0) < high for key, high in self._targets.items()):
            return
        if now - self._last_record >= self._idle_s:
            self.as_of = self._clock()
            self.caught_up.set()
            log.info("%s: caught up (%d records)", self.name, self.records)

    def _probe(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        started = self._clock()
        current = True
        # One ListOffsets(latest) for every partition at once (timestamp OFFSET_END = latest: the
        # high watermark, the same figure as get_watermark_offsets): asked one partition at a time,
        # each round trip took ~20 ms on the embedded broker and the probe held this loop, so no
        # record was read, for ~0.35 s of every 0.5 s with 16 partitions.
        try:
            answers = consumer.offsets_for_times(
                [TopicPartition(tp.topic, tp.partition, OFFSET_END) for tp in self._partitions],
                timeout=self._probe_timeout_s,
            )
        except KafkaException as exc:
            log.debug("%s: broker did not answer the probe: %s", self.name, exc)
            return
        for answer in answers:
            if answer.error is not None:
                log.debug("%s: broker did not answer the probe: %s", self.name, answer.error)
                return
            if self._positions.get((answer.topic, answer.partition), 0) < answer.offset:
                current = False
        self.last_contact = started
        if current and self.caught_up.is_set():
            self.as_of = started

    def _close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
