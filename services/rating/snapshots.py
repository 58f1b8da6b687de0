"""The latest EntitlementSnapshot per customer, read from the compacted `entitlements.snapshots`.

Rating prices with the snapshot (already resolved per customer by the catalog: plan, add-ons,
contract price overrides). The cache reads the topic from the beginning at start-up until it is
caught up, then keeps reading it between batches. A snapshot with a lower `version` than the one
held for the customer is ignored (out of order); a tombstone (null value) forgets the customer.

"Caught up" does not trust end offsets alone (the embedded broker answers "latest" short of the
last records): every partition must have reached its high watermark *and* nothing new may have
arrived for `idle_s`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from metergate.domain.rating import check_snapshot
from metergate.domain.records import EntitlementSnapshot
from metergate.errors import InvalidInput
from metergate.wire.codec import codec

log = logging.getLogger(__name__)


class SnapshotCache:
    def __init__(
        self,
        client_config: Mapping[str, Any],
        topic: str,
        on_reject: Callable[[Message, InvalidInput], None] | None = None,
    ) -> None:
        self.topic = topic
        self._codec = codec(EntitlementSnapshot)
        self._on_reject = on_reject
        self._snapshots: dict[str, EntitlementSnapshot] = {}
        self._consumer = Consumer(
            {
                **client_config,
                "group.id": f"metergate-rating-snapshots-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "auto.offset.reset": "earliest",
            }
        )
        metadata = self._consumer.list_topics(topic, timeout=30)
        partitions = sorted(metadata.topics[topic].partitions)
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self._partitions = partitions
        self.last_caught_up = 0.0

    def get(self, customer_id: str) -> EntitlementSnapshot | None:
        return self._snapshots.get(customer_id)

    def __len__(self) -> int:
        return len(self._snapshots)

    def poll(self, max_messages: int = 10000) -> int:
        """Apply whatever has arrived, without waiting."""
        return self._apply(self._consumer.consume(max_messages, timeout=0))

    def catch_up(self, idle_s: float, timeout_s: float) -> int:
        """Read until every partition is at its high watermark and nothing came for `idle_s`."""
        deadline = time.monotonic() + timeout_s
        highs = {}
        for partition in self._partitions:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=10)
            highs[partition] = high
        positions = dict.fromkeys(self._partitions, -1)
        applied = 0
        last_seen = time.monotonic()
        while time.monotonic() < deadline:
            batch = self._consumer.consume(10000, timeout=min(idle_s, 0.2))
            for message in batch:
                partition, offset = message.partition(), message.offset()
                if message.error() is None and partition is not None and offset is not None:
                    positions[partition] = offset + 1
            applied += self._apply(batch)
            if batch:
                last_seen = time.monotonic()
                continue
            at_end = all(positions[p] >= highs[p] or highs[p] == 0 for p in self._partitions) or all(
                high == 0 for high in highs.values()
            )
            if at_end and time.monotonic() - last_seen >= idle_s:
                break
            if not at_end and time.monotonic() - last_seen >= max(idle_s * 4, 2.0):
                break  # a short high watermark (or compacted tail) never reached: idle long enough
        else:
            log.warning(
                "entitlement snapshots: not caught up after %.0f s; rating with what was read", timeout_s
            )
        self.last_caught_up = time.monotonic()
        return applied

    def _apply(self, messages: list[Message]) -> int:
        applied = 0
        for message in messages:
            if message.error() is not None:
                log.warning("entitlement snapshots: %s", message.error())
                continue
            value = message.value()
            if value is None:
                key = message.key()
                if key is not None:
                    self._snapshots.pop(key.decode(), None)
                continue
            try:
                snapshot = self._codec.decode(value)
                check_snapshot(snapshot)  # ids and currency rating will store in line items
            except InvalidInput as exc:
                log.warning(
                    "entitlement snapshot at %s[%d]@%d rejected: %s",
                    self.topic,
                    message.partition(),
                    message.offset(),
                    exc,
                )
                if self._on_reject is not None:
                    self._on_reject(message, exc)
                continue
            held = self._snapshots.get(snapshot.customer_id)
            if held is None or snapshot.version >= held.version:
                self._snapshots[snapshot.customer_id] = snapshot
                applied += 1
        return applied

    def close(self) -> None:
        self._consumer.close()
