"""The local state an entitlement check answers from (in memory, no I/O).

Fed from three compacted/partitioned topics and from the usage this process reported itself:

- `entitlements.snapshots`: the highest `version` per customer wins (a re-sent or reordered older
  snapshot is ignored); a tombstone forgets the customer.
- `usage.aggregates`: the highest `version` per (customer, meter, period) wins (a crash can re-send
  an older version, always with the value it had).
- `usage.limits`: the highest usage a limit event reported per (customer, feature, period); usage
  is never taken lower than that (a limit event can arrive before its aggregate).
- **pending usage**: each event reported here and delivered to `usage.events` is added at once to
  its (customer, meter, period) with the partition and offset of its delivery report, and dropped
  exactly when an aggregate of that key arrives whose version covers it. An aggregate's version is
  1 + the offset of the last event of its partition folded in, so an aggregate covers a pending
  event when the event lies on the partition metering counts that customer on and
  `offset < version`. Events are reported on that (canonical) partition, so the delivery report's
  position is the one metering counts. A pending event is counted in the period of its event time.

  Metering gives every record of usage.events exactly one verdict: counted (an aggregate whose
  version covers it), a duplicate (a receipt on `usage.duplicates` naming its position as
  `duplicate`) or rejected (a dead letter on `usage.dlq` naming it as `source`). So a pending event
  also leaves, exactly, when the receipt or the dead letter of its partition and offset arrives: it
  will never be in an aggregate. A verdict that arrives before its delivery report is remembered
  (the last `verdict_capacity` positions), and the event is then not added at all.

Usage of a key = max(aggregate value + pending, highest limit-event usage). No double counting: a
pending event leaves the moment the aggregate that includes it is applied (under one lock with the
pending update, so no check sees both); no gap: it stays until then, and a delivery report that
comes after its aggregate is not added at all.

Reads take no lock: every value a check reads is replaced whole (tuples, Decimals, frozen models).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from metergate.domain import entitlements as rules
from metergate.domain.entitlements import Decision, MeteredTerms, Reason, Source
from metergate.domain.periods import Period, period_for
from metergate.domain.records import (
    CreditBalance,
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    LimitEvent,
    UsageAggregate,
)

_ZERO = Decimal(0)

UsageKey = tuple[str, str, datetime]  # customer, meter, period_start
LimitKey = tuple[str, str, datetime]  # customer, feature, period_start
CurrentPeriod = tuple[float, float, Period, dict[str, tuple[UsageKey, LimitKey]]]


@dataclass(frozen=True, slots=True)
class PendingUsage:
    event_id: str
    partition: int
    offset: int
    quantity: Decimal
    period_end: datetime


class FeatureView(MeteredTerms):
    """What a check needs of one feature of one snapshot, computed once when the snapshot arrives."""

    __slots__ = ("meter", "static")

    def __init__(self, entitlement: FeatureEntitlement, customer_id: str) -> None:
        super().__init__(entitlement)
        self.meter = entitlement.meter or entitlement.feature
        #: (has_access, reason, message, kind, config_value) of a feature whose answer needs no usage
        self.static: tuple[bool, Reason, str, FeatureKind, str | None] | None = None
        if not entitlement.enabled:
            message = f"feature {entitlement.feature!r} is disabled for customer {customer_id!r}"
            self.static = (False, Reason.DISABLED, message, entitlement.kind, None)
        elif entitlement.kind is not FeatureKind.METERED:
            self.static = (True, Reason.OK, "entitled", entitlement.kind, entitlement.config_value)


_EPOCH = datetime.fromtimestamp(0, UTC)
_NO_PERIOD = Period(_EPOCH, _EPOCH)


class CustomerView:
    """A customer's snapshot made ready for checks: features by name, the current period cached
    (as POSIX seconds, so a check compares two floats), and the usage keys of that period."""

    __slots__ = ("current", "features", "snapshot")

    def __init__(self, snapshot: EntitlementSnapshot, now_ts: float) -> None:
        self.snapshot = snapshot
        self.features = {f.feature: FeatureView(f, snapshot.customer_id) for f in reversed(snapshot.features)}
        #: (start_ts, end_ts, period, {feature: (usage key, limit-event key)}), replaced whole when the
        #: period rolls over, so a check on another thread never pairs one period's bounds with another's keys
        self.current: CurrentPeriod = (0.0, 0.0, _NO_PERIOD, {})
        if any(f.static is None for f in self.features.values()):
            self.roll(now_ts)  # the period of now, so that no check has to compute it

    def roll(self, now_ts: float) -> CurrentPeriod:
        """Enter the period containing `now_ts` (at the snapshot's arrival, or once it rolled over)."""
        snapshot = self.snapshot
        period = period_for(
            datetime.fromtimestamp(now_ts, UTC), snapshot.billing_anchor, snapshot.reset_period
        )
        current: CurrentPeriod = (period.start.timestamp(), period.end.timestamp(), period, {})
        self.current = current
        return current


@dataclass(frozen=True, slots=True)
class Freshness:
    as_of: datetime | None
    stale: bool
    source: Source
    trusted: (
        bool  # caught up with the topics (or a checkpoint of them): an unknown customer is really unknown
    )


class EntitlementState:
    def __init__(
        self,
        *,
        fallback: Mapping[str, bool] | None = None,
        reported_capacity: int = 1_000_000,
        verdict_capacity: int = 100_000,
        clock: Callable[[], float] = time.time,
    ):
        self._clock = clock  # wall time (POSIX seconds): a new snapshot's view starts in the period of now
        self.snapshots: dict[str, EntitlementSnapshot] = {}
        self.snapshot_bytes: dict[str, bytes] = {}  # the record as received (for the checkpoint)
        self.views: dict[str, CustomerView] = {}  # the snapshots made ready for checks
        self.aggregates: dict[UsageKey, tuple[int, Decimal]] = {}
        self.limit_usage: dict[tuple[str, str, datetime], Decimal] = {}
        self.balances: dict[str, CreditBalance] = {}  # customer -> highest ledger position seen
        self.pending: dict[UsageKey, tuple[PendingUsage, ...]] = {}
        self.pending_totals: dict[UsageKey, Decimal] = {}
        self._pending_at: dict[tuple[int, int], UsageKey] = {}  # (partition, offset) -> its key
        self._verdicts: OrderedDict[tuple[int, int], None] = OrderedDict()  # duplicates and rejections
        self._verdict_capacity = verdict_capacity
        self.reported: OrderedDict[str, None] = OrderedDict()
        self.fallback = dict(fallback or {})
        self.changes = 0  # bumped at each change (the checkpoint writes only when it moved)
        self._reported_capacity = reported_capacity
        self._lock = threading.Lock()

    # -- applying records --------------------------------------------------------------------------
    def apply_snapshot(
        self, customer_id: str, snapshot: EntitlementSnapshot | None, raw: bytes | None
    ) -> bool:
        with self._lock:
            if snapshot is None:  # tombstone
                self.snapshots.pop(customer_id, None)
                self.snapshot_bytes.pop(customer_id, None)
                self.views.pop(customer_id, None)
                self.changes += 1
                return True
            current = self.snapshots.get(snapshot.customer_id)
            if current is not None and snapshot.version < current.version:
                return False
            self.views[snapshot.customer_id] = CustomerView(
                snapshot, self._clock()
            )  # before the snapshot: see check()
            self.snapshots[snapshot.customer_id] = snapshot
            if raw is not None:
                self.snapshot_bytes[snapshot.customer_id] = raw
            self.changes += 1
            return True

    def apply_aggregate(self, aggregate: UsageAggregate) -> bool:
        key = (aggregate.customer_id, aggregate.meter, aggregate.period_start)
        with self._lock:
            current = self.aggregates.get(key)
            if current is not None and aggregate.version <= current[0]:
                return False
            self.aggregates[key] = (aggregate.version, aggregate.value)
            pending = self.pending.get(key)
            if pending:
                self._set_pending(key, tuple(p for p in pending if not covers(aggregate.version, p)))
            self.changes += 1
            return True

    def apply_limit(self, event: LimitEvent) -> bool:
        if event.usage is None:
            return False
        key = (event.customer_id, event.feature, event.period_start)
        with self._lock:
            current = self.limit_usage.get(key)
            if current is not None and current >= event.usage:
                return False
            self.limit_usage[key] = event.usage
            self.changes += 1
            return True

    # -- usage reported here -----------------------------------------------------------------------
    def apply_balance(self, balance: CreditBalance) -> bool:
        """Keep, per customer, the balance with the highest ledger position (an older one never wins)."""
        with self._lock:
            current = self.balances.get(balance.customer_id)
            if current is not None and balance.ledger_position <= current.ledger_position:
                return False
            self.balances[balance.customer_id] = balance
            self.changes += 1
            return True

    def credit_balance(self, customer_id: str) -> Decimal | None:
        known = self.balances.get(customer_id)
        return None if known is None else known.balance

    def was_reported(self, event_id: str) -> bool:
        return event_id in self.reported

    def add_pending(self, customer_id: str, meter: str, period: Period, usage: PendingUsage) -> bool:
        """Count a delivered event at once; False when its aggregate already includes it (or a repeat)."""
        key = (customer_id, meter, period.start)
        with self._lock:
            if usage.event_id in self.reported:
                return False
            self.reported[usage.event_id] = None
            if len(self.reported) > self._reported_capacity:
                self.reported.popitem(last=False)
            current = self.aggregates.get(key)
            if current is not None and covers(current[0], usage):
                return False
            if (usage.partition, usage.offset) in self._verdicts:
                return False  # metering already found it a duplicate or rejected it
            self._set_pending(key, (*self.pending.get(key, ()), usage))
            self.changes += 1
            return True

    def settle(self, partition: int, offset: int) -> bool:
        """Metering will never count the usage.events record at (partition, offset): a duplicate
        receipt or a dead letter names it. Drop it from the pending usage (True if it was there)."""
        position = (partition, offset)
        with self._lock:
            self._verdicts[position] = None
            if len(self._verdicts) > self._verdict_capacity:
                self._verdicts.popitem(last=False)
            key = self._pending_at.get(position)
            if key is None:
                return False
            items = self.pending.get(key, ())
            self._set_pending(key, tuple(p for p in items if (p.partition, p.offset) != position))
            self.changes += 1
            return True

    def restore_pending(self, key: UsageKey, usage: PendingUsage) -> None:
        """Put back a pending event from a checkpoint unless its aggregate already includes it."""
        with self._lock:
            current = self.aggregates.get(key)
            if current is not None and covers(current[0], usage):
                return
            if (usage.partition, usage.offset) in self._verdicts:
                return
            self._set_pending(key, (*self.pending.get(key, ()), usage))

    def expire_pending(self, now: datetime) -> int:
        """Forget pending usage of periods that ended (a check never reads them again)."""
        with self._lock:
            gone = [key for key, items in self.pending.items() if items and items[0].period_end <= now]
            for key in gone:
                self._set_pending(key, ())
            return len(gone)

    def _set_pending(self, key: UsageKey, items: tuple[PendingUsage, ...]) -> None:
        """Replace the pending events of `key` (under the lock), keeping the position index true."""
        positions = {(item.partition, item.offset) for item in items}
        for gone in self.pending.get(key, ()):
            if (gone.partition, gone.offset) not in positions:
                self._pending_at.pop((gone.partition, gone.offset), None)
        for position in positions:
            self._pending_at[position] = key
        if items:
            self.pending[key] = items
            self.pending_totals[key] = sum((p.quantity for p in items), _ZERO)
        else:
            self.pending.pop(key, None)
            self.pending_totals.pop(key, None)

    # -- reading -----------------------------------------------------------------------------------
    def usage(self, customer_id: str, meter: str, period: Period, feature: str | None = None) -> Decimal:
        key = (customer_id, meter, period.start)
        aggregate = self.aggregates.get(key)
        used = aggregate[1] if aggregate is not None else _ZERO
        pending = self.pending_totals.get(key)
        if pending is not None:
            used += pending
        if feature is not None:
            signalled = self.limit_usage.get((customer_id, feature, period.start))
            if signalled is not None and signalled > used:
                used = signalled
        return used

    def check(
        self,
        customer_id: str,
        feature: str,
        requested_units: Decimal,
        now: datetime,
        freshness: Freshness,
    ) -> Decision:
        return self.check_at(customer_id, feature, requested_units, now.timestamp(), freshness)

    def check_at(
        self,
        customer_id: str,
        feature: str,
        requested_units: Decimal,
        now_ts: float,
        freshness: Freshness,
    ) -> Decision:
        """The decision at `now_ts` (POSIX seconds). The hot path: two dict reads for the feature,
        two float comparisons for the period, three dict reads for the usage, the rule, one object;
        everything else was computed when the snapshot or the period changed."""
        view = self.views.get(customer_id)
        if view is None:
            return self._unknown_customer(customer_id, feature, requested_units, now_ts, freshness)
        feature_view = view.features.get(feature)
        if feature_view is None:
            return rules.check(
                view.snapshot,
                customer_id,
                feature,
                now=wall(now_ts) or _EPOCH,
                usage=_no_usage,
                requested_units=requested_units,
                as_of=freshness.as_of,
                stale=freshness.stale,
                source=freshness.source,
            )
        static = feature_view.static
        if static is not None:
            return Decision(
                static[0],
                static[1],
                static[2],
                customer_id,
                feature,
                static[3],
                None,
                None,
                None,
                None,
                None,
                requested_units,
                None,
                static[4],
                None,
                None,
                freshness.as_of,
                freshness.stale,
                freshness.source,
            )
        current = view.current
        if not (current[0] <= now_ts < current[1]):
            current = view.roll(now_ts)
        period = current[2]
        keys = current[3].get(feature)
        if keys is None:
            keys = current[3][feature] = (
                (customer_id, feature_view.meter, period.start),
                (customer_id, feature, period.start),
            )
        aggregate = self.aggregates.get(keys[0])
        used = _ZERO if aggregate is None else aggregate[1]
        pending = self.pending_totals.get(keys[0])
        if pending is not None:
            used += pending
        signalled = self.limit_usage.get(keys[1])
        if signalled is not None and signalled > used:
            used = signalled
        balance = self.balances.get(customer_id)
        return rules.metered(
            feature_view,
            customer_id,
            used,
            requested_units,
            period,
            None if balance is None else balance.balance,
            freshness.as_of,
            freshness.stale,
            freshness.source,
        )

    def _unknown_customer(
        self, customer_id: str, feature: str, requested_units: Decimal, now_ts: float, freshness: Freshness
    ) -> Decision:
        if not freshness.trusted or freshness.stale or freshness.source is Source.CACHE:
            answer = rules.fallback(
                customer_id,
                feature,
                self.fallback,
                requested_units,
                as_of=freshness.as_of,
                stale=freshness.stale,
            )
            if answer is not None:
                return answer
        return rules.check(
            None,
            customer_id,
            feature,
            now=wall(now_ts) or _EPOCH,
            usage=_no_usage,
            requested_units=requested_units,
            as_of=freshness.as_of,
            stale=freshness.stale,
            source=freshness.source,
        )

    def features(self, customer_id: str, now: datetime, freshness: Freshness) -> list[Decision] | None:
        """Every feature of the customer with its usage and limits (None: customer not known)."""
        snapshot = self.snapshots.get(customer_id)
        if snapshot is None:
            return None
        return [self.check(customer_id, f.feature, _ZERO, now, freshness) for f in snapshot.features]


def covers(version: int, usage: PendingUsage) -> bool:
    """Whether an aggregate of `version` includes a pending event (version = 1 + last offset folded in)."""
    return usage.offset < version


def _no_usage(_meter: str, _period: Period) -> Decimal:
    return _ZERO


def wall(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)
