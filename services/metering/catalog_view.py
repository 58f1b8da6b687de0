"""Every meter and every customer's entitlement snapshot, kept current from the compacted topics.

Each worker needs ALL meters and the snapshots of every customer whose events it may be assigned,
so this is not a consumer-group agent (a group would hand each worker a share of the partitions):
a `metergate.kafka.follow.TopicFollower` on its own thread reads every partition of `catalog.meters`
and `entitlements.snapshots` from the beginning, outside any group, and keeps tailing them (how it
finds the true end, and what it does with a record it cannot decode, is written there). For a
customer the highest snapshot `version` wins, whatever the order records arrive in.

Dated terms (`metergate.domain.terms.DatedTerms`): `snapshot_at(customer, ms)` gives the terms in
force at an event's time, so an event is metered under the terms of its own time, whenever it is
read: a late event or a replay after an upgrade is counted as it was before.

`wait_until_current()` blocks until the follower has read both topics to their end as the broker
reports it after the call: the worker calls it before processing and again, at most once a second,
when an event names a meter it does not know.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Message

from metergate.domain.records import EntitlementSnapshot, MeterDefinition
from metergate.domain.terms import DatedTerms
from metergate.kafka.follow import TopicFollower, apply_each
from metergate.wire.codec import codec


class CatalogView:
    def __init__(self, client_config: Mapping[str, Any], meters_topic: str, snapshots_topic: str) -> None:
        self.meters: dict[str, MeterDefinition] = {}
        self.terms = DatedTerms()
        self._meters_topic = meters_topic
        self._meter_codec, self._snapshot_codec = codec(MeterDefinition), codec(EntitlementSnapshot)
        self._follower = TopicFollower(
            client_config,
            [meters_topic, snapshots_topic],
            self._on_records,
            name="catalog-view",
            batch_size=1000,
            poll_timeout_s=0.1,
            idle_s=0.15,
            consumer_overrides={
                "fetch.wait.max.ms": 100
            },  # the embedded broker holds a fetch for the full wait
        )
        self._last_refresh = 0.0

    def start(self) -> None:
        self._follower.start()

    def stop(self) -> None:
        self._follower.stop(timeout_s=5)

    def _on_records(self, messages: list[Message]) -> None:
        apply_each("catalog-view", messages, self._apply)

    def _apply(self, message: Message) -> None:
        value = message.value()
        if value is None:
            return
        if message.topic() == self._meters_topic:
            meter = self._meter_codec.decode(value)
            self.meters[meter.meter] = meter
        else:
            self.remember(self._snapshot_codec.decode(value))

    def remember(self, snapshot: EntitlementSnapshot) -> None:
        self.terms.remember(snapshot)

    def wait_until_current(self, timeout_s: float = 10.0) -> None:
        """Block until everything the broker reports on both topics has been read."""
        if not self._follower.wait_current(timeout_s):
            raise TimeoutError(f"catalog topics not read to their end within {timeout_s}s")
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
        """The customer's newest terms."""
        return self.terms.newest(customer_id)

    @property
    def snapshot_at(self) -> Callable[[str, int], EntitlementSnapshot | None]:
        """The customer's terms in force at an event's time (ms): `DatedTerms.at`."""
        return self.terms.at
