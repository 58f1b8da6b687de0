"""Metering's rules of a batch (metergate.domain.metering), with no broker and no store: every
record gets exactly one outcome, and the effects name the figures an independent count gives."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from metergate.domain.aggregation import PeriodTotal
from metergate.domain.dedup import FirstSeen
from metergate.domain.metering import (
    ACCEPTED,
    DUPLICATE,
    FORWARDED,
    REJECTED,
    MeteringCore,
    MeteringRules,
    millis,
)
from metergate.domain.partitioning import partition_for
from metergate.domain.records import (
    Aggregation,
    Enforcement,
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    LimitKind,
    MeterDefinition,
    ResetPeriod,
)
from metergate.domain.usage import Rejection

pytestmark = pytest.mark.unit

PARTITIONS = 4
NOW = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
NOW_MS = millis(NOW)
DAY_MS = 86_400_000
RULES = MeteringRules(
    partitions=PARTITIONS,
    dedup_window_ms=7 * DAY_MS,
    future_skew_ms=300_000,
    late_grace_ms=DAY_MS,
    events_topic="usage.events",
)
METERS = {
    "api_calls": MeterDefinition(meter="api_calls", aggregation=Aggregation.SUM),
    "seats": MeterDefinition(meter="seats", aggregation=Aggregation.UNIQUE_COUNT, unique_property="user"),
}


def customer_on(partition: int, index: int = 0) -> str:
    """The index-th customer id whose canonical partition is `partition`."""
    found = [f"cust-{n}" for n in range(200) if partition_for(f"cust-{n}", PARTITIONS) == partition]
    return found[index]


@dataclass
class Record:
    offset: int
    value: bytes | None = b"raw"
    key: bytes | None = b"k"
    timestamp: int | None = NOW_MS


class Catalog:
    def __init__(self, snapshots: dict[str, EntitlementSnapshot] | None = None) -> None:
        self.snapshots = snapshots or {}
        self.dated: dict[str, list[tuple[int, int, EntitlementSnapshot]]] = {}

    def meter(self, name: str) -> MeterDefinition | None:
        return METERS.get(name)

    def snapshot(self, customer_id: str, at_ms: int) -> EntitlementSnapshot | None:
        dated = self.dated.get(customer_id)
        if dated is not None:  # (from ms, to ms, snapshot): the terms in force at at_ms
            return next((snap for start, end, snap in dated if start <= at_ms < end), None)
        return self.snapshots.get(customer_id)


class State:
    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], FirstSeen] = {}
        self.totals: dict[str, PeriodTotal] = {}
        self.marks: dict[tuple[int, str], list[str]] = {}

    def first_seen_many(self, ids):
        return [self.seen.get(event) for event in ids]

    def total(self, key: str) -> PeriodTotal | None:
        return self.totals.get(key)

    def sent_marks(self, partition: int, key: str):
        return self.marks.get((partition, key), ())

    def commit(self, fx) -> None:
        """What the commit order makes durable, as far as the rules read it back."""
        for key, (_p, found) in fx.totals.items():
            self.totals[key] = found
        for entries in fx.new_seen.values():
            for customer, event_id, seen in entries:
                self.seen[(customer, event_id)] = seen


def event(
    customer: str, event_id: str, quantity: str = "1", at: datetime = NOW, **extra: Any
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "customer_id": customer,
        "meter": extra.pop("meter", "api_calls"),
        "quantity": Decimal(quantity),
        "timestamp": millis(at),
        **extra,
    }


def run(core: MeteringCore, state: State, partition: int, data: list[Any], first_offset: int = 0):
    records = [(Record(first_offset + i), datum) for i, datum in enumerate(data)]
    return core.meter_batch([(partition, records)], state, NOW_MS)


def only_total(fx) -> PeriodTotal:
    assert len(fx.totals) == 1
    return next(iter(fx.totals.values()))[1]


def test_each_record_has_exactly_one_outcome_and_the_total_is_the_sum_of_the_accepted():
    core, state = MeteringCore(RULES, Catalog()), State()
    mine, other = customer_on(0), customer_on(1)
    fx = run(
        core,
        state,
        0,
        [
            event(mine, "e1", "2.5"),
            event(mine, "e2", "4"),
            event(mine, "e1", "2.5"),  # a later copy in the same batch
            event(other, "e3", "9"),  # counted on partition 1
            Rejection("undecodable", "value: not Avro"),
            event(mine, "e4", "-1"),  # bad shape
            event(mine, "e5", "1", meter="nope"),  # unknown meter
        ],
    )
    assert fx.outcomes[0] == [2, 1, 3, 1]  # accepted, duplicate, rejected, forwarded
    assert sum(fx.outcomes[0]) == 7
    assert fx.last_offset == {0: 6}
    assert only_total(fx).total.value == Decimal("6.5")
    assert only_total(fx).total.applied_offset == 1
    assert [(f.to, f.customer_id, f.record.offset) for f in fx.forwards] == [(1, other, 3)]
    assert dict(fx.rejected_by_reason) == {"undecodable": 1, "invalid_quantity": 1, "unknown_meter": 1}
    assert [dead.source.offset for _, dead in fx.dead_letters] == [4, 5, 6]
    (_, receipt) = fx.receipts[0]
    assert (receipt.first_seen.offset, receipt.duplicate.offset) == (0, 2)
    assert [(c, e, s.offset) for c, e, s in fx.new_seen[0]] == [(mine, "e1", 0), (mine, "e2", 1)]


def test_a_copy_in_a_later_batch_is_a_duplicate_and_the_first_copy_read_again_is_a_replay():
    core, state = MeteringCore(RULES, Catalog()), State()
    mine = customer_on(2)
    state.commit(run(core, state, 2, [event(mine, "e1", "3")]))
    later = run(core, state, 2, [event(mine, "e1", "3")], first_offset=10)
    assert later.outcomes[2] == [0, 1, 0, 0] and not later.totals
    # the first copy itself read again (a crash before the group commit): accepted, folds nothing
    replay = run(core, state, 2, [event(mine, "e1", "3")], first_offset=0)
    assert replay.outcomes[2] == [1, 0, 0, 0]
    assert not replay.totals and not replay.new_seen[2]
    # ... and when its dedup entry did not become durable (a crash between the changelog's
    # records) but its total did, it records the entry again, still folding nothing
    del state.seen[(mine, "e1")]
    again = run(core, state, 2, [event(mine, "e1", "3")], first_offset=0)
    assert again.outcomes[2] == [1, 0, 0, 0] and not again.totals
    assert [(c, e, s.offset) for c, e, s in again.new_seen[2]] == [(mine, "e1", 0)]
    assert next(iter(state.totals.values())).total.value == Decimal(3)


def test_clock_rules_apply_to_first_copies_only():
    core, state = MeteringCore(RULES, Catalog()), State()
    mine = customer_on(0)
    fx = run(
        core,
        state,
        0,
        [
            event(mine, "future", at=NOW + timedelta(minutes=6)),
            event(mine, "old", at=NOW - timedelta(days=8)),
            event(mine, "edge", at=NOW + timedelta(minutes=5)),
        ],
    )
    assert dict(fx.rejected_by_reason) == {"future_timestamp": 1, "outside_dedup_window": 1}
    assert fx.outcomes[0] == [1, 0, 2, 0]


def test_a_sum_past_decimal_38_9_is_rejected_and_the_total_keeps_its_value():
    core, state = MeteringCore(RULES, Catalog()), State()
    mine = customer_on(0)
    big = "6" + "0" * 28  # 6 * 10^28; adding 5 * 10^28 passes 10^29
    fx = run(core, state, 0, [event(mine, "a", big), event(mine, "b", "5" + "0" * 28)])
    assert dict(fx.rejected_by_reason) == {"total_overflow": 1}
    assert only_total(fx).total.value == Decimal(big)


def test_a_period_that_ended_past_the_grace_is_marked_late():
    state, mine = State(), customer_on(0)
    last_month = datetime(2026, 2, 27, tzinfo=UTC)  # February ended 13.5 days before NOW
    core = MeteringCore(replace(RULES, dedup_window_ms=40 * DAY_MS), Catalog())
    fx = run(core, state, 0, [event(mine, "a", at=last_month)])
    found = only_total(fx)
    assert found.total.late is True
    assert found.period_start_ms == millis(datetime(2026, 2, 1, tzinfo=UTC))


def test_the_period_follows_the_billing_anchor_and_the_total_carries_the_subscription_terms():
    mine = customer_on(0)
    snapshot = EntitlementSnapshot(
        customer_id=mine,
        subscription_id="sub-1",
        plan_key="growth",
        plan_version=3,
        billing_anchor=datetime(2026, 1, 10, tzinfo=UTC),
        reset_period=ResetPeriod.MONTHLY,
        updated_at=NOW,
    )
    core, state = MeteringCore(RULES, Catalog({mine: snapshot})), State()
    found = only_total(run(core, state, 0, [event(mine, "a")]))
    assert found.period_start_ms == millis(datetime(2026, 3, 10, tzinfo=UTC))
    assert found.period_end_ms == millis(datetime(2026, 4, 10, tzinfo=UTC))
    assert (found.subscription_id, found.plan_key, found.plan_version) == ("sub-1", "growth", 3)


def test_limit_events_are_due_once_each_at_the_crossing_event():
    mine = customer_on(1)
    feature = FeatureEntitlement(
        feature="api",
        kind=FeatureKind.METERED,
        meter="api_calls",
        limit=Decimal(10),
        enforcement=Enforcement.HARD,
        thresholds=(50,),
    )
    snapshot = EntitlementSnapshot(customer_id=mine, subscription_id="s", features=(feature,), updated_at=NOW)
    core, state = MeteringCore(RULES, Catalog({mine: snapshot})), State()
    fx = run(core, state, 1, [event(mine, f"e{i}", "3") for i in range(5)])  # 3, 6, 9, 12, 15
    got = [(e.kind, e.threshold, e.usage, e.event_id) for _, e, _ in fx.limit_events]
    assert got == [
        (LimitKind.THRESHOLD_CROSSED, 50, Decimal(6), "e1"),
        (LimitKind.LIMIT_REACHED, None, Decimal(12), "e3"),
        (LimitKind.HARD_LIMIT_EXCEEDED, None, Decimal(12), "e3"),
    ]
    state.commit(fx)
    again = run(core, state, 1, [event(mine, "e9", "1")], first_offset=5)
    assert again.limit_events == []
    # marks an interrupted batch is known to have sent suppress them in a fresh total too
    state2 = State()
    state2.marks[(1, next(iter(fx.totals)))] = [m for m in only_total(fx).total.emitted]
    replayed = run(MeteringCore(RULES, Catalog({mine: snapshot})), state2, 1, [event(mine, "x", "20")])
    assert replayed.limit_events == []


def test_unique_count_counts_distinct_values_and_needs_its_property():
    core, state = MeteringCore(RULES, Catalog()), State()
    mine = customer_on(3)
    fx = run(
        core,
        state,
        3,
        [
            event(mine, "a", meter="seats", properties={"user": "u1"}),
            event(mine, "b", meter="seats", properties={"user": "u2"}),
            event(mine, "c", meter="seats", properties={"user": "u1"}),
            event(mine, "d", meter="seats", properties={}),
        ],
    )
    assert only_total(fx).total.value == Decimal(2)
    assert dict(fx.rejected_by_reason) == {"missing_property": 1}
    assert fx.count(ACCEPTED) == 3 and fx.count(REJECTED) == 1
    assert fx.count(DUPLICATE) == 0 and fx.count(FORWARDED) == 0


def test_each_event_is_metered_under_the_terms_in_force_at_its_own_time():
    """An upgrade on the 10th: an event of the 9th read after it (late, or a replay) keeps the old
    plan's limit; one of the 11th meets the new plan's."""
    mine = customer_on(0)
    upgrade = datetime(2026, 3, 10, tzinfo=UTC)

    def plan(limit: int, key: str, version: int) -> EntitlementSnapshot:
        feature = FeatureEntitlement(
            feature="api",
            kind=FeatureKind.METERED,
            meter="api_calls",
            limit=Decimal(limit),
            enforcement=Enforcement.HARD,
        )
        return EntitlementSnapshot(
            customer_id=mine,
            subscription_id=f"sub-{key}",
            plan_key=key,
            plan_version=1,
            features=(feature,),
            version=version,
            updated_at=NOW,
        )

    catalog = Catalog()
    catalog.dated[mine] = [
        (millis(upgrade), 2**62, plan(100, "big", 2)),
        (-(2**62), millis(upgrade), plan(5, "small", 1)),
    ]
    core, state = MeteringCore(RULES, catalog), State()
    fx = run(
        core,
        state,
        0,
        [
            event(mine, "late", "6", at=upgrade - timedelta(days=1)),  # past the small plan's 5
            event(mine, "new", "50", at=upgrade + timedelta(days=1)),  # 56 of the big plan's 100
        ],
    )
    kinds = [(e.kind, e.limit, e.event_id) for _, e, _ in fx.limit_events]
    assert kinds == [
        (LimitKind.LIMIT_REACHED, Decimal(5), "late"),
        (LimitKind.HARD_LIMIT_EXCEEDED, Decimal(5), "late"),
    ]
    found = only_total(fx)
    assert found.total.value == Decimal(56) and found.plan_key == "big"  # stamped by the last event
