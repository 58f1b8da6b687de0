"""Every customer's EntitlementSnapshots over time, read from the compacted `entitlements.snapshots`.

Rating prices with the snapshot (already resolved per customer by the catalog: plan, add-ons,
contract price overrides). The cache is a `metergate.kafka.follow.TopicFollower` polled by the
rating loop: it reads the topic from the beginning at start-up until it is caught up (to the true
end, as follow.py defines it), then keeps reading it between batches. What is held per customer, and
which snapshot is in force at a moment, is `metergate.domain.terms.DatedTerms`'s rule (`terms`): the
newest version for what has no date, the terms in force at each moment for dated snapshots; a
tombstone (null value) forgets the customer; a snapshot rating cannot use is skipped by follow.py's policy and handed to
`on_reject` (rating sends it to usage.dlq).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Message

from metergate.domain.rating import check_snapshot
from metergate.domain.records import EntitlementSnapshot
from metergate.domain.terms import DatedTerms
from metergate.kafka.follow import OnReject, TopicFollower, apply_each
from metergate.wire.codec import codec

log = logging.getLogger(__name__)


class SnapshotCache:
    def __init__(
        self, client_config: Mapping[str, Any], topic: str, on_reject: OnReject | None = None
    ) -> None:
        self.topic = topic
        self._codec = codec(EntitlementSnapshot)
        self._on_reject = on_reject
        self.terms = DatedTerms()
        #: customers whose snapshots changed since `take_changed` last asked (rating bills their fees)
        self.changed: set[str] = set()
        self._applied = 0
        #: moves whenever what is held changes (a snapshot kept, a customer forgotten)
        self.generation = 0
        self._follower = TopicFollower(
            client_config,
            [topic],
            self._on_records,
            name="rating-snapshots",
            probe_interval_s=math.inf,  # polled between batches: catch_up() asks for the watermarks
            consumer_overrides={"fetch.wait.max.ms": 500},
        )
        self.last_caught_up = 0.0

    def get(self, customer_id: str) -> EntitlementSnapshot | None:
        """The customer's newest snapshot."""
        return self.terms.newest(customer_id)

    @property
    def lookup(self) -> Callable[[str], EntitlementSnapshot | None]:
        """`get` without the Python call in between (the fold asks once per record)."""
        return self.terms.newest_by_customer.get

    def __len__(self) -> int:
        return len(self.terms)

    def poll(self, max_messages: int = 10000) -> int:
        """Apply whatever has arrived, without waiting."""
        before = self._applied
        self._follower.poll(0)
        return self._applied - before

    def catch_up(self, idle_s: float, timeout_s: float) -> int:
        """Read until every partition is at its true end (nothing new came for `idle_s`)."""
        before = self._applied
        if not self._follower.catch_up(timeout_s, idle_s=idle_s):
            log.warning(
                "entitlement snapshots: not caught up after %.0f s; rating with what was read", timeout_s
            )
        self.last_caught_up = time.monotonic()
        return self._applied - before

    def _on_records(self, messages: list[Message]) -> None:
        apply_each("rating-snapshots", messages, self._apply, self._on_reject)

    def _apply(self, message: Message) -> None:
        value = message.value()
        if value is None:
            key = message.key()
            if key is not None:
                self.terms.forget(key.decode())
                self.changed.add(key.decode())
                self.generation += 1
            return
        snapshot = self._codec.decode(value)
        check_snapshot(snapshot)  # ids and currency rating will store in line items
        self.terms.remember(snapshot)
        self.changed.add(snapshot.customer_id)
        self._applied += 1
        self.generation += 1

    def take_changed(self) -> set[str]:
        """The customers whose snapshots changed since the last call (all of them after start-up)."""
        changed, self.changed = self.changed, set()
        return changed

    def close(self) -> None:
        self._follower.close()
