"""Every topic metergate uses: its name, partitioning and cleanup policy, in one place.

`Topics(prefix)` gives the concrete names; tests use a unique prefix per test so they never share
state. The embedded stack and `metergate topics create` create exactly these.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicSpec:
    name: str  # without prefix
    compacted: bool
    partitioned: bool  # True: the usage partition count; False: one partition is enough
    doc: str


TOPIC_SPECS: tuple[TopicSpec, ...] = (
    TopicSpec("usage.events", False, True, "UsageEvent, key customer_id: what producers emit"),
    TopicSpec("usage.aggregates", True, True, "UsageAggregate, key customer|meter|period: running totals"),
    TopicSpec(
        "usage.limits", False, True, "LimitEvent, key customer_id: threshold/limit/overage/credit signals"
    ),
    TopicSpec("usage.duplicates", False, True, "DuplicateReceipt, key customer_id: copies not counted"),
    TopicSpec("usage.dlq", False, False, "DeadLetter: rejected records with reason and original bytes"),
    TopicSpec("entitlements.snapshots", True, True, "EntitlementSnapshot, key customer_id"),
    TopicSpec("catalog.meters", True, False, "MeterDefinition, key meter"),
    TopicSpec(
        "credits.balances",
        True,
        True,
        "CreditBalance, key customer_id: balance per committed ledger position",
    ),
)


@dataclass(frozen=True)
class Topics:
    prefix: str = ""

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def events(self) -> str:
        return self.name("usage.events")

    @property
    def aggregates(self) -> str:
        return self.name("usage.aggregates")

    @property
    def limits(self) -> str:
        return self.name("usage.limits")

    @property
    def duplicates(self) -> str:
        return self.name("usage.duplicates")

    @property
    def dlq(self) -> str:
        return self.name("usage.dlq")

    @property
    def snapshots(self) -> str:
        return self.name("entitlements.snapshots")

    @property
    def meters(self) -> str:
        return self.name("catalog.meters")

    @property
    def balances(self) -> str:
        return self.name("credits.balances")

    def all(self) -> list[str]:
        return [self.name(spec.name) for spec in TOPIC_SPECS]
