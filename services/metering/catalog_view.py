"""Every meter and every customer's entitlement snapshot, kept current from the compacted topics.

Each worker needs ALL meters and the snapshots of every customer whose events it may be assigned,
so this is not a consumer-group agent (a group would hand each worker a share of the partitions):
a background thread reads every partition of `catalog.meters` and `entitlements.snapshots` from the
beginning, outside any group, and keeps tailing them. For a customer the highest snapshot `version`
wins, whatever the order records arrive in.

`wait_until_current()` blocks until the thread has read what the broker reports as the end of both
topics (end offsets are short on the embedded broker, so "caught up" is `position >= reported end`
followed by a quiet poll): the worker calls it before processing and again, at most once a second,
when an event names a meter it does not know.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from metergate.domain.records import EntitlementSnapshot, MeterDefinition
from metergate.errors import DecodeError
from metergate.wire.codec import codec

log = logging.getLogger(__name__)


class CatalogView:
    def __init__(self, client_config: Mapping[str, Any], meters_topic: str, snapshots_topic: str) -> None:
        self.meters: dict[str, MeterDefinition] = {}
        self.snapshots: dict[str, EntitlementSnapshot] = {}
        self._config = dict(client_config)
        self._topics = (meters_topic, snapshots_topic)
        self._positions: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._progress = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._probe: Consumer | None = None  # end-offset queries, never used by the reading thread
        self._probe_lock = threading.Lock()
        self._last_refresh = 0.0
        self._failure: BaseException | None = None

    def start(self) -> None:
        self._consumer = Consumer(
            {
                **self._config,
                "group.id": f"catalog-view-{uuid.uuid4().hex}",  # never joins: partitions are assigned
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 100,  # the embedded broker holds a fetch for the full wait
            }
        )
        assignment = []
        for topic in self._topics:
            metadata = self._consumer.list_topics(topic, timeout=10)
            for partition in metadata.topics[topic].partitions:
                assignment.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
        self._consumer.assign(assignment)
        # A second client for end offsets: calling into the reading thread's consumer from another
        # thread while it is inside consume() blocked for good (seen in tests).
        self._probe = Consumer({**self._config, "group.id": f"catalog-probe-{uuid.uuid4().hex}"})
        self._thread = threading.Thread(target=self._run, name="catalog-view", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._consumer is not None:
            self._consumer.close()
        if self._probe is not None:
            self._probe.close()

    def _run(self) -> None:
        meter_codec, snapshot_codec = codec(MeterDefinition), codec(EntitlementSnapshot)
        consumer = self._consumer
        assert consumer is not None
        meters_topic, _ = self._topics
        try:
            while not self._stop.is_set():
                messages = consumer.consume(1000, timeout=0.1)
                with self._lock:
                    for message in messages:
                        if message.error():
                            continue
                        topic, value = message.topic(), message.value()
                        self._positions[(str(topic), int(message.partition() or 0))] = (
                            int(message.offset() or 0) + 1
                        )
                        if value is None:
                            continue
                        try:
                            if topic == meters_topic:
                                meter = meter_codec.decode(value)
                                self.meters[meter.meter] = meter
                            else:
                                snapshot = snapshot_codec.decode(value)
                                known = self.snapshots.get(snapshot.customer_id)
                                if known is None or snapshot.version >= known.version:
                                    self.snapshots[snapshot.customer_id] = snapshot
                        except DecodeError as exc:
                            log.error(
                                "skipping an unreadable catalog record at %s/%d@%d: %s",
                                topic,
                                message.partition(),
                                message.offset(),
                                exc,
                            )
                    self._progress.notify_all()
        except BaseException as exc:  # a fault of ours: surfaced by the next wait_until_current
            self._failure = exc
            raise

    def wait_until_current(self, timeout_s: float = 10.0) -> None:
        """Block until everything the broker reports on both topics has been read."""
        probe = self._probe
        assert probe is not None
        ends: dict[tuple[str, int], int] = {}
        with self._probe_lock:
            for topic in self._topics:
                metadata = probe.list_topics(topic, timeout=10)
                for partition in metadata.topics[topic].partitions:
                    _, high = probe.get_watermark_offsets(
                        TopicPartition(topic, partition), timeout=10, cached=False
                    )
                    ends[(topic, partition)] = high
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                if self._failure is not None:
                    raise RuntimeError("the catalog view stopped") from self._failure
                behind = [tp for tp, end in ends.items() if end > 0 and self._positions.get(tp, 0) < end]
                if not behind:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"catalog topics not read to their end within {timeout_s}s: {behind}")
                self._progress.wait(remaining)
            # end offsets can be short on the embedded broker: wait for one more quiet poll round
            self._progress.wait(0.15)
        self._last_refresh = time.monotonic()

    def refresh_if_stale(self, min_interval_s: float = 1.0) -> bool:
        """Catch up once more unless that was done less than `min_interval_s` ago."""
        if time.monotonic() - self._last_refresh < min_interval_s:
            return False
        self.wait_until_current()
        return True

    def meter(self, name: str) -> MeterDefinition | None:
        return self.meters.get(name)

    def snapshot(self, customer_id: str) -> EntitlementSnapshot | None:
        return self.snapshots.get(customer_id)
