"""Entitlement decisions from what an enforcement service has seen (pure: no I/O).

The state is built from two streams: the customer's `EntitlementSnapshot` (what the plan allows)
and `LimitEvent`s (what usage did). Rules:

- no snapshot for the customer, or the feature is not in it, or it is disabled: **deny**;
- boolean and config features: **allow** (config features also return their value);
- metered features: **deny** once a `limit_reached` or `hard_limit_exceeded` event arrived for that
  (customer, feature, period) and the feature's enforcement is `hard`; the block lifts by itself
  when the period ends (the next period starts with fresh usage). Soft and unenforced limits only
  warn: the decision is allow, with the last signal as the reason.
- a limit event is applied once, by its `limit_event_id` (metering may re-send after a crash).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from metergate.domain.entitlements import shown
from metergate.domain.records import (
    Enforcement,
    EntitlementSnapshot,
    FeatureKind,
    LimitEvent,
    LimitKind,
)

_shown = shown  # one way to write a figure for people, shared with the entitlement check


BLOCKING_KINDS = frozenset({LimitKind.LIMIT_REACHED, LimitKind.HARD_LIMIT_EXCEEDED})


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    config_value: str | None = None


@dataclass
class Block:
    period_end: datetime
    event: LimitEvent


@dataclass
class EnforcementState:
    snapshots: dict[str, EntitlementSnapshot] = field(default_factory=dict)
    blocks: dict[tuple[str, str], Block] = field(default_factory=dict)
    warnings: dict[tuple[str, str], LimitEvent] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    received: list[LimitEvent] = field(default_factory=list)

    def apply_snapshot(self, snapshot: EntitlementSnapshot) -> None:
        current = self.snapshots.get(snapshot.customer_id)
        if current is None or snapshot.version >= current.version:
            self.snapshots[snapshot.customer_id] = snapshot

    def apply_limit_event(self, event: LimitEvent) -> bool:
        """Apply a limit event; False when it was seen before (a re-sent signal)."""
        if event.limit_event_id in self.seen:
            return False
        self.seen.add(event.limit_event_id)
        self.received.append(event)
        key = (event.customer_id, event.feature)
        # the enforcement is looked up when a check is answered, not here: a limit event can arrive
        # before the customer's snapshot (two topics, no order between them) or the plan can change
        if event.kind in BLOCKING_KINDS:
            current = self.blocks.get(key)
            if current is None or current.period_end <= event.period_end:
                self.blocks[key] = Block(period_end=event.period_end, event=event)
        else:
            self.warnings[key] = event
        return True

    def _enforcement(self, customer_id: str, feature: str) -> Enforcement | None:
        snapshot = self.snapshots.get(customer_id)
        if snapshot is None:
            return None
        for entitlement in snapshot.features:
            if entitlement.feature == feature:
                return entitlement.enforcement
        return None

    def check(self, customer_id: str, feature: str, now: datetime) -> Decision:
        snapshot = self.snapshots.get(customer_id)
        if snapshot is None:
            return Decision(False, f"no entitlements known for customer {customer_id!r}")
        entitlement = next((f for f in snapshot.features if f.feature == feature), None)
        if entitlement is None:
            return Decision(False, f"plan {snapshot.plan_key!r} does not include feature {feature!r}")
        if not entitlement.enabled:
            return Decision(False, f"feature {feature!r} is disabled for {customer_id!r}")
        if entitlement.kind is not FeatureKind.METERED:
            return Decision(True, "entitled", entitlement.config_value)
        block = self.blocks.get((customer_id, feature))
        if block is not None and now < block.period_end and entitlement.enforcement is Enforcement.HARD:
            return Decision(
                False,
                f"hard limit of {_shown(block.event.limit)} reached for {feature!r} until {block.period_end.isoformat()}",
            )
        if block is not None and now < block.period_end:
            return Decision(
                True,
                f"entitled ({block.event.kind.value} at {_shown(block.event.usage)}, {entitlement.enforcement.value} limit)",
            )
        warning = self.warnings.get((customer_id, feature))
        if warning is not None and now < warning.period_end:
            return Decision(True, f"entitled ({warning.kind.value} at {_shown(warning.usage)})")
        return Decision(True, "entitled")

    def blocked(self, now: datetime) -> list[tuple[str, str]]:
        return sorted(
            key
            for key, block in self.blocks.items()
            if now < block.period_end and self._enforcement(*key) is Enforcement.HARD
        )
