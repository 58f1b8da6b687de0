"""The rating fold: replays change nothing, batching does not change what is written, lines never double."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metergate.domain.ledger import Entry, EntryType, Grant, Wallet
from metergate.domain.pricing import ChargeStatus, ChargeType
from metergate.domain.rating import Line, RatingFold
from metergate.domain.records import (
    Aggregation,
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    Pricing,
    PricingModel,
    UsageAggregate,
)

pytestmark = pytest.mark.unit

P0 = datetime(2026, 3, 1, tzinfo=UTC)
P1 = datetime(2026, 4, 1, tzinfo=UTC)


def snapshot(
    customer: str, version: int = 1, unit_price: str = "0.50", **overrides: object
) -> EntitlementSnapshot:
    values: dict[str, object] = {
        "customer_id": customer,
        "subscription_id": f"sub-{customer}",
        "plan_key": "pro",
        "plan_version": 1,
        "currency": "USD",
        "base_fee": D("20"),
        "features": (
            FeatureEntitlement(
                feature="api_calls",
                kind=FeatureKind.METERED,
                meter="api_calls",
                included=D(10),
                pricing=Pricing(model=PricingModel.PER_UNIT, unit_price=D(unit_price)),
            ),
        ),
        "version": version,
        "updated_at": P0,
    }
    values.update(overrides)
    return EntitlementSnapshot.model_validate(values)


def aggregate(
    customer: str, value: str, version: int, meter: str = "api_calls", **kw: object
) -> UsageAggregate:
    return UsageAggregate(
        customer_id=customer,
        meter=meter,
        aggregation=Aggregation.SUM,
        period_start=P0,
        period_end=P1,
        value=D(value),
        event_count=version,
        version=version,
        last_event_at=P0 + timedelta(hours=version),
        last_event_id=f"e{version}",
        updated_at=P0,
        **kw,  # type: ignore[arg-type]
    )


@dataclass
class Store:
    """What the database keeps between batches, as the rating store loads and writes it."""

    lines: dict[str, Line] = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)
    wallets: dict[tuple[str, str], Wallet] = field(default_factory=dict)
    credits: dict[str, dict[str, D]] = field(default_factory=dict)

    def batch(self, records: list[UsageAggregate], snapshots: dict[str, EntitlementSnapshot]) -> RatingFold:
        keys = {r.key for r in records}
        lines = {k: {lk: line for lk, line in self.lines.items() if line.aggregate_key == k} for k in keys}
        fold = RatingFold(
            lines=lines, wallets=copy.deepcopy(self.wallets), credits=copy.deepcopy(self.credits)
        )
        for record in records:
            fold.apply(record, snapshots.get(record.customer_id))
        for entry in fold.entries:
            assert entry.idempotency_key not in self.entries, f"entry written twice: {entry.idempotency_key}"
            self.entries[entry.idempotency_key] = entry
        self.lines.update(fold.changed)
        self.wallets = fold.wallets
        self.credits = fold.credits
        return fold


def with_credit(store: Store, customer: str, *amounts: str) -> None:
    w = Wallet(customer, "USD")
    for index, amount in enumerate(amounts):
        entry = w.add_grant(Grant(f"{customer}-g{index}", customer, "USD", D(amount), index, P0))
        store.entries[entry.idempotency_key] = entry
    store.wallets[(customer, "USD")] = w


def test_a_running_total_makes_a_usage_line_and_no_fee_line() -> None:
    store = Store()
    store.batch([aggregate("acme", "30", 1), aggregate("acme", "110", 2)], {"acme": snapshot("acme")})
    usage = store.lines["acme|sub-acme|api_calls|2026-03-01T00:00:00+00:00|usage"]
    assert (usage.quantity, usage.billable_quantity, usage.amount, usage.aggregate_version) == (
        D(110),
        D(100),
        D("50.00"),
        2,
    )
    # the base fee is billed from the snapshots alone (test_fee_lines_of_a_period), not from usage
    assert [line.charge for line in store.lines.values()] == [ChargeType.USAGE]


def test_replay_and_older_versions_change_nothing() -> None:
    store = Store()
    with_credit(store, "acme", "30")
    records = [aggregate("acme", str(10 + 20 * v), v) for v in range(1, 6)]
    store.batch(records, {"acme": snapshot("acme")})
    before = (dict(store.lines), dict(store.entries))
    fold = store.batch(records[::-1] + records, {"acme": snapshot("acme")})
    assert fold.updates == 0 and fold.stale == 10 and fold.changed == {} and fold.entries == []
    assert (store.lines, store.entries) == before


def test_snapshot_arriving_later_supersedes_the_unpriced_line() -> None:
    store = Store()
    fold = store.batch([aggregate("late", "50", 1)], {})
    (applied,) = [fold.changed[k] for k in fold.changed]
    assert applied.status is ChargeStatus.UNPRICED and applied.unpriced_reason == "unknown_plan"
    store.batch([aggregate("late", "60", 2)], {"late": snapshot("late")})
    usage = sorted(
        (line.subscription_id, line.status.value, line.quantity, line.amount)
        for line in store.lines.values()
        if line.charge is ChargeType.USAGE
    )
    # the unpriced line (no subscription known) is kept for audit at zero; the rated one bills 50 x 0.50
    assert usage == [("", "superseded", D(50), D(0)), ("sub-late", "rated", D(60), D("25.00"))]


def test_moving_a_meter_to_another_feature_never_bills_twice() -> None:
    store = Store()
    with_credit(store, "acme", "100")
    store.batch([aggregate("acme", "50", 1)], {"acme": snapshot("acme")})
    renamed = snapshot(
        "acme",
        version=2,
        features=(
            FeatureEntitlement(
                feature="requests",
                kind=FeatureKind.METERED,
                meter="api_calls",
                included=D(10),
                pricing=Pricing(model=PricingModel.PER_UNIT, unit_price=D("0.50")),
            ),
        ),
    )
    store.batch([aggregate("acme", "70", 2)], {"acme": renamed})
    usage = {line.feature: line for line in store.lines.values() if line.charge is ChargeType.USAGE}
    assert (usage["api_calls"].status, usage["api_calls"].amount, usage["api_calls"].credits_applied) == (
        ChargeStatus.SUPERSEDED,
        D(0),
        D(0),
    )
    assert (usage["requests"].amount, usage["requests"].credits_applied) == (D("30.00"), D("30.00"))
    assert store.wallets[("acme", "USD")].balance == D(70)


# -- property: batch boundaries (a crash restarts at any record) do not change the result ----------


@st.composite
def streams(draw: st.DrawFn) -> list[UsageAggregate]:
    """Per key, increasing running totals (LATEST gauges may fall); keys interleaved; duplicates."""
    per_key: list[list[UsageAggregate]] = []
    for customer in draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True)):
        for meter in draw(
            st.lists(st.sampled_from(["api_calls", "storage"]), min_size=1, max_size=2, unique=True)
        ):
            values = draw(st.lists(st.integers(0, 400), min_size=1, max_size=8))
            per_key.append([aggregate(customer, str(v), i + 1, meter=meter) for i, v in enumerate(values)])
    stream: list[UsageAggregate] = []
    while any(per_key):
        queue = draw(st.sampled_from([q for q in per_key if q]))
        record = queue.pop(0)
        stream.append(record)
        if draw(st.integers(0, 9)) == 0:
            stream.append(record)  # a redelivery
    return stream


SNAPSHOTS = {c: snapshot(c) for c in ("a", "b")}  # "c" has none: unknown plan


def run(stream: list[UsageAggregate], cuts: list[int]) -> Store:
    store = Store()
    with_credit(store, "a", "40", "25")
    with_credit(store, "b", "5")
    bounds = [0, *sorted(set(cuts)), len(stream)]
    for start, end in itertools.pairwise(bounds):
        store.batch(stream[start:end], SNAPSHOTS)
    return store


@settings(max_examples=200, deadline=None)
@given(streams(), st.lists(st.integers(0, 60), max_size=6), st.integers(0, 60))
def test_batching_and_replays_do_not_change_lines_or_ledger(
    stream: list[UsageAggregate], cuts: list[int], crash_at: int
) -> None:
    whole = run(stream, [])
    batched = run(stream, [c for c in cuts if c < len(stream)])
    assert batched.lines == whole.lines
    assert batched.entries == whole.entries

    # a crash after `crash_at` records: the restart replays from an earlier committed offset
    crash_at = min(crash_at, len(stream))
    crashed = run(stream[:crash_at], [])
    for record_batch in (stream[: crash_at // 2], stream[crash_at // 2 :]):
        crashed.batch(record_batch, SNAPSHOTS)
    assert crashed.lines == whole.lines
    assert crashed.entries == whole.entries

    # ledger: balance per wallet = sum of its entries; a line never uses more credit than it costs
    for (customer, _), w in whole.wallets.items():
        total = sum((e.amount for e in whole.entries.values() if e.customer_id == customer), D(0))
        assert w.balance == total >= 0
    for line in whole.lines.values():
        assert 0 <= line.credits_applied <= max(line.amount, D(0))
        used = -sum(
            (
                e.amount
                for e in whole.entries.values()
                if e.line_key == line.line_key and e.entry_type is not EntryType.EXPIRY
            ),
            D(0),
        )
        assert used == line.credits_applied

    # the final lines are the rating of the newest version of every key
    newest: dict[str, UsageAggregate] = {}
    for record in stream:
        if record.key not in newest or record.version > newest[record.key].version:
            newest[record.key] = record
    for key, record in newest.items():
        usage = [line for line in whole.lines.values() if line.aggregate_key == key]
        assert {line.aggregate_version for line in usage} == {record.version}
        assert all(line.quantity == record.value for line in usage)


@settings(max_examples=200, deadline=None)
@given(streams(), st.sets(st.sampled_from(["a", "b", "c"])))
def test_folding_customers_apart_then_joining_them_is_one_fold(
    stream: list[UsageAggregate], apart: set[str]
) -> None:
    # what the consumer does when it folds the customers without credit ahead of the transaction
    def fresh() -> Store:
        store = Store()
        with_credit(store, "a", "40", "25")
        with_credit(store, "b", "5")
        return store

    whole = fresh().batch(stream, SNAPSHOTS)
    joined = fresh().batch([r for r in stream if r.customer_id not in apart], SNAPSHOTS)
    joined.absorb(fresh().batch([r for r in stream if r.customer_id in apart], SNAPSHOTS))
    assert joined.changed == whole.changed
    assert sorted(e.idempotency_key for e in joined.entries) == sorted(
        e.idempotency_key for e in whole.entries
    )
    assert {e.idempotency_key: e for e in joined.entries} == {e.idempotency_key: e for e in whole.entries}
    assert joined.credits == whole.credits
    assert {k: v for k, v in joined.lines.items() if v} == {k: v for k, v in whole.lines.items() if v}
    assert (joined.updates, joined.stale) == (whole.updates, whole.stale)
    assert sorted((d.customer_id, d.sequence) for d, _, _ in joined.depletions) == sorted(
        (d.customer_id, d.sequence) for d, _, _ in whole.depletions
    )


def invoice_totals(store: Store) -> dict[tuple[str, datetime, str], tuple[object, ...]]:
    """What the invoice refresh computes from the lines: per customer, period and currency."""
    totals: dict[tuple[str, datetime, str], list[object]] = {}
    for line in store.lines.values():
        if line.status is ChargeStatus.SUPERSEDED:
            continue
        key = (line.customer_id, line.period_start, line.currency)
        row = totals.setdefault(key, [D(0), D(0), 0, "", line.period_end])
        row[0] += line.amount  # type: ignore[operator]
        row[1] += line.credits_applied  # type: ignore[operator]
        row[2] += 1  # type: ignore[operator]
        row[3] = max(row[3], line.subscription_id)  # type: ignore[type-var]
        row[4] = max(row[4], line.period_end)  # type: ignore[type-var]
    return {key: tuple(row) for key, row in totals.items()}


@settings(max_examples=200, deadline=None)
@given(streams(), st.lists(st.integers(0, 60), max_size=6))
def test_only_invoices_whose_totals_can_change_are_refreshed(
    stream: list[UsageAggregate], cuts: list[int]
) -> None:
    store = Store()
    with_credit(store, "a", "40", "25")
    with_credit(store, "b", "5")
    bounds = [0, *sorted({c for c in cuts if c < len(stream)}), len(stream)]
    for start, end in itertools.pairwise(bounds):
        before = invoice_totals(store)
        fold = store.batch(stream[start:end], SNAPSHOTS)
        after = invoice_totals(store)
        moved = {
            (c, p)
            for (c, p, cur) in set(before) | set(after)
            if before.get((c, p, cur)) != after.get((c, p, cur))
        }
        assert moved <= fold.invoices


def test_a_newer_version_that_moves_no_amount_refreshes_no_invoice() -> None:
    lines: dict[str, dict[str, Line]] = {}

    def batch(record: UsageAggregate) -> RatingFold:
        fold = RatingFold(lines=lines, wallets={}, credits={})
        fold.apply(record, snapshot("acme"))
        return fold

    assert batch(aggregate("acme", "3", 1)).invoices == {("acme", P0)}  # a new usage line
    same = batch(aggregate("acme", "7", 2))  # still within the 10 included units: 0.00 again
    assert same.changed and same.invoices == set()
    assert batch(aggregate("acme", "12", 3)).invoices == {("acme", P0)}  # 2 x 0.50 billed
