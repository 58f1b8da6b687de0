"""Subscriptions as dated versions: every change, the terms in force, and proration, against figures
computed by hand in the comments (actual milliseconds in force / actual milliseconds of the period)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from fractions import Fraction
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metergate.domain.catalog import PlanVersion
from metergate.domain.records import (
    Enforcement,
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    Pricing,
    PricingModel,
    ResetPeriod,
)
from metergate.domain.subscriptions import (
    AddOn,
    PriceOverrides,
    PublishedPlan,
    Usage,
    When,
    bill_period,
    cancel,
    change_plan,
    create,
    fees_of_snapshots,
    prorated_included,
    set_add_on,
    set_overrides,
    set_variables,
    snapshot_at,
    snapshot_in_force,
    unschedule,
)
from metergate.errors import InvalidInput, SubscriptionError

pytestmark = pytest.mark.unit


def at(day: int, month: int = 11, year: int = 2026) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


def calls(included: str, unit_price: str, limit: str | None = None, hard: bool = False) -> FeatureEntitlement:
    return FeatureEntitlement(
        feature="api_calls",
        kind=FeatureKind.METERED,
        meter="api_calls",
        included=D(included),
        limit=None if limit is None else D(limit),
        enforcement=Enforcement.HARD if hard else Enforcement.NONE,
        pricing=Pricing(model=PricingModel.PER_UNIT, unit_price=D(unit_price)),
    )


def plan(
    key: str,
    base_fee: str,
    *features: FeatureEntitlement,
    version: int = 1,
    variable: frozenset[str] = frozenset(),
    add_ons: dict[str, AddOn] | None = None,
) -> PublishedPlan:
    return PublishedPlan(
        PlanVersion(
            plan=key,
            version=version,
            currency="USD",
            base_fee=D(base_fee),
            reset_period=ResetPeriod.MONTHLY,
            features={f.feature: f for f in features},
        ),
        variable=variable,
        add_ons=add_ons or {},
    )


# Growth: $1,000/month, 10,000,000 API calls included, $0.20 per extra 1,000 (0.0002 a call).
GROWTH = plan("growth", "1000.00", calls("10000000", "0.0002"))
# Scale: $2,000/month, 50,000,000 included, $0.15 per extra 1,000 (0.00015 a call).
SCALE = plan("scale", "2000.00", calls("50000000", "0.00015"))


def subscribe(offer: PublishedPlan = GROWTH, start: datetime | None = None, **kw):  # type: ignore[no-untyped-def]
    start = start or at(1)
    return create(subscription_id="sub-1", customer_id="acme", plan=offer, start=start, now=start, **kw)


def amounts(bill) -> list[tuple[str, str, D]]:  # type: ignore[no-untyped-def]
    return [(line.plan, line.charge.feature, line.charge.amount) for line in bill.lines]


def test_an_upgrade_on_day_15_prorates_the_base_fee_and_prices_usage_by_the_plan_in_force():
    history = change_plan(subscribe(), SCALE, at=When.IMMEDIATELY, now=at(15))
    usage = [
        Usage(at(3), "api_calls", D(2_000_000)),
        Usage(datetime(2026, 11, 14, 23, 59, 59, 999000, tzinfo=UTC), "api_calls", D(4_000_000)),
        Usage(at(15), "api_calls", D(10_000_000)),  # the first millisecond of Scale
        Usage(at(30), "api_calls", D(20_000_000)),
    ]
    bill = bill_period(history, at(20), usage)
    # November has 30 days; Growth is in force Nov 1-14 (14/30), Scale Nov 15-30 (16/30).
    # Growth fee 1000 x 14/30 = 466.666.. -> 466.67; allowance 10,000,000 x 14/30 = 4,666,666.67
    #   -> 4,666,667; 6,000,000 used -> 1,333,333 billable x 0.0002 = 266.6666 -> 266.67.
    # Scale fee 2000 x 16/30 = 1066.666.. -> 1066.67; allowance 50,000,000 x 16/30 -> 26,666,667;
    #   30,000,000 used -> 3,333,333 x 0.00015 = 499.99995 -> 500.00.
    assert amounts(bill) == [
        ("growth", "base_fee", D("466.67")),
        ("growth", "api_calls", D("266.67")),
        ("scale", "base_fee", D("1066.67")),
        ("scale", "api_calls", D("500.00")),
    ]
    assert [line.charge.billable_quantity for line in bill.lines if line.charge.meter] == [
        D(1_333_333),
        D(3_333_333),
    ]
    assert bill.total == D("2300.01")
    growth_fee = bill.lines[0].charge
    assert (growth_fee.detail, growth_fee.quantity) == (
        "base fee of growth v1 for 14/30 days",
        D("0.466666667"),
    )
    assert bill.unbilled == ()


def test_a_31_day_month_counts_31_days():
    start = at(1, month=12)
    history = change_plan(subscribe(start=start), SCALE, at=When.IMMEDIATELY, now=at(15, month=12))
    # 1000 x 14/31 = 451.6129.. -> 451.61; 2000 x 17/31 = 1096.7741.. -> 1096.77
    assert amounts(bill_period(history, at(2, month=12))) == [
        ("growth", "base_fee", D("451.61")),
        ("scale", "base_fee", D("1096.77")),
    ]


def test_a_month_without_usage_still_bills_the_base_fee():
    enterprise = plan("enterprise", "2000.00", calls("100000000", "0.0001"))
    history = subscribe(enterprise)
    for month in (11, 12):
        bill = bill_period(history, at(10, month=month))
        assert amounts(bill) == [("enterprise", "base_fee", D("2000.00"))]


def test_a_cancellation_mid_period_prorates_and_leaves_later_usage_unbilled():
    history = cancel(subscribe(), at=When.IMMEDIATELY, now=at(10))
    late = Usage(at(12), "api_calls", D(5))
    bill = bill_period(history, at(1), [Usage(at(2), "api_calls", D(11_000_000)), late])
    # 9 days of 30: fee 1000 x 9/30 = 300.00; allowance 10,000,000 x 9/30 = 3,000,000;
    # 11,000,000 - 3,000,000 = 8,000,000 x 0.0002 = 1600.00
    assert amounts(bill) == [("growth", "base_fee", D("300.00")), ("growth", "api_calls", D("1600.00"))]
    assert bill.unbilled == (late,)
    assert amounts(bill_period(history, at(5, month=12))) == []
    assert snapshot_at(history, at(10), version=1, updated_at=at(10)) is None
    assert (
        snapshot_at(history, datetime(2026, 11, 9, 23, 59, tzinfo=UTC), version=1, updated_at=at(9))
        is not None
    )


def test_a_cancellation_at_period_end_bills_the_whole_period_and_nothing_after():
    history = cancel(subscribe(), at=When.PERIOD_END, now=at(10))
    assert history.end == at(1, month=12)
    assert amounts(bill_period(history, at(29))) == [("growth", "base_fee", D("1000.00"))]
    assert amounts(bill_period(history, at(2, month=12))) == []
    with pytest.raises(SubscriptionError, match=r"^at: the subscription already ends at 2026-12-01"):
        cancel(history, at=When.PERIOD_END, now=at(11))


def test_customers_on_a_grandfathered_version_keep_it_until_migrated_at_period_end():
    pro_v1 = plan("pro", "49.00", calls("10000", "0.002"))
    history = subscribe(pro_v1)
    pro_v2 = plan("pro", "59.00", calls("20000", "0.0015"), version=2)  # published later: v1 untouched
    assert snapshot_at(history, at(20), version=1, updated_at=at(20)).plan_version == 1  # type: ignore[union-attr]
    migrated = change_plan(history, pro_v2, at=When.PERIOD_END, now=at(20))
    assert [(v.plan.version, v.effective_from, v.effective_to) for v in migrated.versions] == [
        (1, at(1), at(1, month=12)),
        (2, at(1, month=12), None),
    ]
    assert amounts(bill_period(migrated, at(30))) == [("pro", "base_fee", D("49.00"))]
    assert amounts(bill_period(migrated, at(1, month=12))) == [("pro", "base_fee", D("59.00"))]


def test_a_custom_plans_negotiated_values_are_required_and_enforced():
    custom = plan(
        "custom",
        "5000.00",
        calls("0", "0.0001", limit="1", hard=True),
        FeatureEntitlement(feature="retention_days", kind=FeatureKind.CONFIG, config_value="30"),
        variable=frozenset({"api_calls.included", "api_calls.limit", "retention_days"}),
    )
    with pytest.raises(SubscriptionError) as missing:
        subscribe(custom, variables={"api_calls.limit": D(90_000_000)})
    assert missing.value.field == "variables.api_calls.included"
    assert str(missing.value) == (
        "variables.api_calls.included: custom v1 marks it negotiated: give the contract's value "
        "(missing: api_calls.included, retention_days)"
    )
    with pytest.raises(SubscriptionError, match=r"^variables.api_calls.included: expected at most the limit"):
        subscribe(custom, variables={"api_calls.included": 9, "api_calls.limit": 5, "retention_days": "400"})
    with pytest.raises(SubscriptionError, match=r"^variables.sso: not negotiable on custom v1"):
        subscribe(
            custom,
            variables={"api_calls.included": 1, "api_calls.limit": 5, "retention_days": "400", "sso": "1"},
        )
    history = subscribe(
        custom,
        variables={"api_calls.included": "60000000", "api_calls.limit": 90_000_000, "retention_days": 400},
    )
    snap = snapshot_at(history, at(2), version=1, updated_at=at(2))
    assert snap is not None
    features = {f.feature: f for f in snap.features}
    assert (features["api_calls"].included, features["api_calls"].limit) == (D(60_000_000), D(90_000_000))
    assert features["retention_days"].config_value == "400"
    raised = set_variables(history, {"api_calls.limit": D(120_000_000)}, at=When.IMMEDIATELY, now=at(10))
    later = snapshot_at(raised, at(11), version=2, updated_at=at(11))
    assert later is not None and {f.feature: f.limit for f in later.features}["api_calls"] == D(120_000_000)


def test_an_add_on_with_a_price_override_is_billed_at_the_override():
    extra = AddOn(
        key="extra_calls",
        currency="USD",
        fee=D("100.00"),
        features={"api_calls": calls("5000000", "0", limit="5000000")},
    )
    growth = plan(
        "growth", "1000.00", calls("10000000", "0.0002", limit="20000000"), add_ons={"extra_calls": extra}
    )
    history = subscribe(growth, overrides=PriceOverrides(add_on_fees={"extra_calls": D("80.00")}))
    history = set_add_on(
        history, "extra_calls", 2, at=When.IMMEDIATELY, now=at(1)
    )  # amends the first version
    assert len(history.versions) == 1
    bill = bill_period(history, at(5), [Usage(at(5), "api_calls", D(21_000_000))])
    # fee 2 x 80.00 = 160.00; included 10,000,000 + 2 x 5,000,000 = 20,000,000; limit 20M + 10M;
    # 1,000,000 billable x 0.0002 = 200.00
    assert amounts(bill) == [
        ("growth", "base_fee", D("1000.00")),
        ("growth", "add_on:extra_calls", D("160.00")),
        ("growth", "api_calls", D("200.00")),
    ]
    snap = snapshot_at(history, at(5), version=1, updated_at=at(5))
    assert snap is not None and snap.base_fee == D("1160")
    assert snap.features[0].limit == D(30_000_000)
    # removed on day 16 of 30: the add-on is billed 15/30 of 160.00 = 80.00
    removed = set_add_on(history, "extra_calls", 0, at=When.IMMEDIATELY, now=at(16))
    assert amounts(bill_period(removed, at(5))) == [
        ("growth", "base_fee", D("500.00")),
        ("growth", "add_on:extra_calls", D("80.00")),
        ("growth", "base_fee", D("500.00")),
    ]


def test_a_base_fee_and_usage_price_override_replace_the_plans():
    history = subscribe(
        overrides=PriceOverrides(
            base_fee=D("900.00"),
            pricing={"api_calls": Pricing(model=PricingModel.PER_UNIT, unit_price=D("0.0001"))},
        )
    )
    bill = bill_period(history, at(5), [Usage(at(5), "api_calls", D(11_000_000))])
    assert amounts(bill) == [("growth", "base_fee", D("900.00")), ("growth", "api_calls", D("100.00"))]
    changed = set_overrides(history, PriceOverrides(), at=When.PERIOD_END, now=at(5))
    assert amounts(bill_period(changed, at(5, month=12))) == [("growth", "base_fee", D("1000.00"))]


def test_a_scheduled_change_is_amended_at_its_moment_and_blocks_an_earlier_one_until_unscheduled():
    history = change_plan(subscribe(), SCALE, at=When.PERIOD_END, now=at(10))
    with pytest.raises(SubscriptionError, match=r"^at: a change is scheduled at 2026-12-01T00:00:00"):
        cancel(history, at=When.IMMEDIATELY, now=at(11))
    back = unschedule(history, now=at(11))
    assert [(v.plan.plan, v.effective_to) for v in back.versions] == [("growth", None)]
    with pytest.raises(SubscriptionError, match=r"^at: nothing is scheduled after now"):
        unschedule(back, now=at(12))
    with pytest.raises(SubscriptionError, match=r"^at: expected now or later"):
        change_plan(history, SCALE, at=at(5), now=at(11))


def test_bad_changes_name_the_field():
    history = subscribe()
    cases = [
        (lambda: set_add_on(history, "turbo", 1, at=When.IMMEDIATELY, now=at(2)), "add_ons.turbo"),
        (lambda: set_add_on(history, "turbo", 0, at=When.IMMEDIATELY, now=at(2)), "add_ons.turbo"),
        (
            lambda: set_overrides(
                history, PriceOverrides(pricing={"tokens": Pricing()}), at=When.IMMEDIATELY, now=at(2)
            ),
            "overrides.pricing.tokens",
        ),
        (
            lambda: set_overrides(history, PriceOverrides(base_fee=D(-1)), at=When.IMMEDIATELY, now=at(2)),
            "overrides.base_fee",
        ),
        (
            lambda: set_overrides(
                history,
                PriceOverrides(
                    pricing={
                        "api_calls": Pricing(model=PricingModel.PACKAGE, unit_price=D(1), package_size=D(0))
                    }
                ),
                at=When.IMMEDIATELY,
                now=at(2),
            ),
            "overrides.pricing.api_calls.package_size",
        ),
        (
            lambda: create(subscription_id="", customer_id="a", plan=GROWTH, start=at(1), now=at(1)),
            "subscription_id",
        ),
        (lambda: create(subscription_id="s", customer_id="a", plan=GROWTH, start=at(1), now=at(2)), "start"),
        (
            lambda: set_variables(history, {"api_calls.limit": 5}, at=When.IMMEDIATELY, now=at(2)),
            "variables.api_calls.limit",
        ),
    ]
    euro = PublishedPlan(replace(GROWTH.terms, plan="growth_eur", currency="EUR"))
    cases.append((lambda: change_plan(history, euro, at=When.IMMEDIATELY, now=at(2)), "plan"))
    cases.append(
        (
            lambda: create(subscription_id="s\x00", customer_id="a", plan=GROWTH, start=at(1), now=at(1)),
            "subscription_id",
        )
    )
    for change, field in cases:
        with pytest.raises(SubscriptionError) as error:
            change()
        assert error.value.field == field, error.value
        assert str(error.value).startswith(f"{field}: ")
        assert isinstance(error.value, InvalidInput)


def test_included_units_are_prorated_to_the_precision_the_plan_gives_them():
    assert prorated_included(D(10_000_000), Fraction(14, 30)) == D(4_666_667)
    assert prorated_included(D("2.5"), Fraction(1, 3)) == D("0.8")
    assert prorated_included(D(0), Fraction(1, 3)) == D(0)


def test_a_plan_version_can_mark_only_its_own_config_values_and_metered_quantities_variable():
    for path in ("sso", "api_calls", "api_calls.pricing"):
        with pytest.raises(SubscriptionError) as error:
            plan("custom", "1", calls("0", "0"), variable=frozenset({path}))
        assert error.value.field == f"variable.{path}"


# -- properties ------------------------------------------------------------------------------------

NOVEMBER_MS = 30 * 86_400_000
SAME_FEE = plan("other", "1000.00", calls("20000000", "0.0001"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=NOVEMBER_MS - 1), unique=True, max_size=6))
def test_changes_between_plans_of_one_fee_bill_that_fee_up_to_one_rounding_per_segment(offsets):
    history = subscribe()
    offers = [GROWTH, SAME_FEE]
    for i, offset in enumerate(sorted(offsets)):
        moment = at(1) + timedelta(milliseconds=offset)
        history = change_plan(history, offers[(i + 1) % 2], at=When.IMMEDIATELY, now=moment)
    bill = bill_period(history, at(1))
    assert len(bill.lines) == len(offsets) + 1
    assert abs(bill.total - D("1000.00")) <= D("0.005") * len(bill.lines)
    assert sum((line.segment_end - line.segment_start for line in bill.lines), timedelta()) == timedelta(
        days=30
    )


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=1, max_value=NOVEMBER_MS - 1), st.integers(min_value=1, max_value=NOVEMBER_MS - 1)
)
def test_a_cancellation_bills_the_time_in_force_and_a_later_one_never_less(first, second):
    def fee(offset: int) -> D:
        cancelled = cancel(subscribe(), at=When.IMMEDIATELY, now=at(1) + timedelta(milliseconds=offset))
        (line,) = bill_period(cancelled, at(1)).lines
        return line.charge.amount

    # independent computation: 1000 x ms / ms of November, rounded half-up to cents
    expected = (D(1000) * D(first) / D(NOVEMBER_MS)).quantize(D("0.01"), rounding="ROUND_HALF_UP")
    assert fee(first) == expected
    if first <= second:
        assert fee(first) <= fee(second)


# -- dated snapshots: what a topic reader applies --------------------------------------------------


def dated(history, version: int):  # type: ignore[no-untyped-def]
    """The snapshots the outbox relay publishes for `history`: one per version with its interval."""
    found = []
    for number, v in enumerate(history.versions, start=version):
        snap = snapshot_at(history, v.effective_from, version=number, updated_at=v.effective_from)
        found.append(snap.model_copy(update={"valid_from": v.effective_from, "valid_to": v.effective_to}))
    if history.end is not None:
        found.append(
            EntitlementSnapshot(
                customer_id="acme", version=version + 99, updated_at=history.end, valid_from=history.end
            )
        )
    return found


def test_a_reader_of_dated_snapshots_bills_the_same_base_fees_as_the_history():
    history = change_plan(subscribe(), SCALE, at=When.IMMEDIATELY, now=at(15))
    history = cancel(history, at=at(25), now=at(15))
    snapshots = dated(history, version=10)
    from_history = [line.charge for line in bill_period(history, at(2)).lines]
    from_topic = fees_of_snapshots(snapshots, history.period_at(at(2)))
    # growth 1000 x 14/30 = 466.67; scale 2000 x 10/30 = 666.67; nothing from Nov 25 on
    assert [c.amount for c in from_topic] == [D("466.67"), D("666.67")]
    assert from_topic == from_history
    assert snapshot_in_force(snapshots, at(14)).plan_key == "growth"  # type: ignore[union-attr]
    assert snapshot_in_force(snapshots, at(15)).plan_key == "scale"  # type: ignore[union-attr]
    assert snapshot_in_force(snapshots, at(25)).subscription_id is None  # type: ignore[union-attr]


def test_the_highest_version_wins_where_dated_snapshots_overlap():
    first = dated(subscribe(), version=1)[0]  # growth, open from Nov 1
    later = dated(change_plan(subscribe(), SCALE, at=When.IMMEDIATELY, now=at(11)), version=5)
    snapshots = [first, *later]  # the stale open-ended growth terms overlap the newer scale terms
    assert snapshot_in_force(snapshots, at(20)).plan_key == "scale"  # type: ignore[union-attr]
    assert snapshot_in_force(snapshots, at(5)).version == 5  # type: ignore[union-attr]
    # growth 1000 x 10/30 = 333.33, scale 2000 x 20/30 = 1333.33
    assert [(c.amount, c.detail) for c in fees_of_snapshots(snapshots, subscribe().period_at(at(1)))] == [
        (D("333.33"), "base fee of growth v1 for 10/30 days"),
        (D("1333.33"), "base fee of scale v1 for 20/30 days"),
    ]


def test_limits_are_not_prorated_the_limit_in_force_applies_to_the_whole_periods_usage():
    from metergate.domain.entitlements import check

    small = plan("growth", "1000.00", calls("0", "0.0002", limit="1000", hard=True))
    large = plan("scale", "2000.00", calls("0", "0.00015", limit="5000", hard=True))
    history = change_plan(
        create(subscription_id="s", customer_id="acme", plan=small, start=at(1), now=at(1)),
        large,
        at=When.IMMEDIATELY,
        now=at(15),
    )
    history = change_plan(history, small, at=When.IMMEDIATELY, now=at(20))
    used = {"before the upgrade": D(900), "after it": D(1200)}

    def decide(moment: datetime, usage: D, units: int):  # type: ignore[no-untyped-def]
        snapshot = snapshot_at(history, moment, version=1, updated_at=moment)
        return check(
            snapshot, "acme", "api_calls", now=moment, usage=lambda _m, _p: usage, requested_units=D(units)
        )

    # day 14 on growth: 900 used, 200 more would cross 1000
    assert (
        decide(at(14), used["before the upgrade"], 200).has_access,
        decide(at(14), D(900), 200).limit,
    ) == (
        False,
        D(1000),
    )
    # day 15 on scale: the whole 5000 (not 16/30 of it) against the period's usage so far
    on_scale = decide(at(15), used["before the upgrade"], 200)
    assert (on_scale.has_access, on_scale.limit, on_scale.remaining) == (True, D(5000), D(4100))
    # day 20 back on growth with 1200 used: above the hard limit at once
    back = decide(at(20), used["after it"], 1)
    assert (back.has_access, back.reason.value, back.limit) == (False, "limit_exceeded", D(1000))


EXTRA_SEATS = AddOn(key="extra", currency="USD", fee=D("10"), features={"api_calls": calls("1000", "0")})
FLEX = plan("flex", "500.00", calls("1000", "0.001"), add_ons={"extra": EXTRA_SEATS})
FLEX_V2 = plan("flex", "550.00", calls("2000", "0.001"), version=2, add_ons={"extra": EXTRA_SEATS})
OPERATIONS = st.sampled_from(["upgrade", "migrate", "add", "remove", "override", "cancel", "unschedule"])
WHEN = st.sampled_from(["immediately", "period_end", "later"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(OPERATIONS, WHEN, st.integers(min_value=0, max_value=40 * 86_400_000)), max_size=12)
)
def test_any_sequence_of_changes_keeps_the_history_contiguous_and_the_past_unchanged(steps):
    history = create(subscription_id="s", customer_id="acme", plan=FLEX, start=at(1), now=at(1))
    now = at(1)
    for operation, when, step_ms in steps:
        now = now + timedelta(milliseconds=step_ms)
        moment = {"immediately": When.IMMEDIATELY, "period_end": When.PERIOD_END}.get(
            when, now + timedelta(days=3)
        )
        before = history
        try:
            if operation == "upgrade":
                history = change_plan(
                    history, SCALE if history.latest.plan is FLEX else FLEX, at=moment, now=now
                )
            elif operation == "migrate":
                history = change_plan(history, FLEX_V2, at=moment, now=now)
            elif operation == "add":
                history = set_add_on(history, "extra", 2, at=moment, now=now)
            elif operation == "remove":
                history = set_add_on(history, "extra", 0, at=moment, now=now)
            elif operation == "override":
                history = set_overrides(history, PriceOverrides(base_fee=D("1.00")), at=moment, now=now)
            elif operation == "cancel":
                history = cancel(history, at=moment, now=now)
            else:
                history = unschedule(history, now=now)
        except SubscriptionError:
            assert history is before  # a refused change changes nothing
            continue
        versions = history.versions
        assert [v.number for v in versions] == sorted({v.number for v in versions})
        for earlier, later in pairwise(versions):
            assert earlier.effective_to == later.effective_from  # contiguous, no overlap
        for version in versions:
            assert version.effective_to is None or version.effective_from < version.effective_to
        # what was in force before now is what was in force before the change
        for old in before.versions:
            if old.effective_from < now:
                probe = min(old.effective_to or now, now) - timedelta(milliseconds=1)
                if probe >= old.effective_from:
                    kept = history.in_force(probe)
                    assert kept is not None and kept.as_dict() | {"effective_to": None, "number": 0} == (
                        old.as_dict() | {"effective_to": None, "number": 0}
                    )
