"""The base-fee and add-on fee lines rating writes for a customer's period, from its dated snapshots
alone (`metergate.domain.rating.fee_periods` / `fee_changes`): billed with or without usage,
prorated by time in force when the terms change mid-period, a line no longer wanted superseded,
stable keys so that a replay writes nothing. Every figure computed by hand in the comments."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from metergate.domain.periods import Period
from metergate.domain.pricing import ChargeStatus, ChargeType
from metergate.domain.rating import Line, fee_changes, fee_line_key, fee_periods, terms_version
from metergate.domain.records import AddOnFee, EntitlementSnapshot, ResetPeriod

pytestmark = pytest.mark.unit


def at(day: int, month: int = 11, year: int = 2026) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


NOVEMBER = Period(at(1), at(1, 12))
DECEMBER = Period(at(1, 12), at(1, 1, 2027))


def snap(
    plan: str,
    fee: str,
    version: int,
    valid_from: datetime | None = None,
    valid_to: datetime | None = None,
    *,
    subscription: str | None = "sub-acme",
    add_ons: tuple[AddOnFee, ...] = (),
) -> EntitlementSnapshot:
    return EntitlementSnapshot(
        customer_id="acme",
        subscription_id=subscription,
        plan_key=plan if subscription else None,
        plan_version=1 if subscription else None,
        base_fee=D(fee),
        version=version,
        updated_at=at(1),
        billing_anchor=at(1) if subscription else None,
        reset_period=ResetPeriod.MONTHLY,
        valid_from=valid_from,
        valid_to=valid_to,
        add_on_fees=add_ons,
    )


def store(lines: list[Line]) -> dict[str, Line]:
    return {line.line_key: line for line in lines}


def shown(lines: list[Line]) -> list[tuple[str, str | None, D, ChargeStatus, str]]:
    return [(line.feature, line.plan_key, line.amount, line.status, line.detail) for line in lines]


def test_a_month_without_usage_bills_its_base_fee_once():
    snapshots = [snap("enterprise", "2000.00", 5, at(1))]
    assert fee_periods(snapshots, at(10), lookback=1) == [NOVEMBER]
    lines = fee_changes("acme", NOVEMBER, snapshots, {})
    assert shown(lines) == [
        (
            "base_fee",
            "enterprise",
            D("2000.00"),
            ChargeStatus.RATED,
            "base fee of enterprise v1 for 30/30 days",
        )
    ]
    (line,) = lines
    assert line.line_key == fee_line_key("acme", "sub-acme", "base_fee", at(1), at(1))
    assert (
        line.line_key == "acme|sub-acme|base_fee|2026-11-01T00:00:00+00:00|base_fee|2026-11-01T00:00:00+00:00"
    )
    assert (line.charge, line.quantity, line.snapshot_version, line.aggregate_key) == (
        ChargeType.BASE_FEE,
        D(1),
        5,
        None,
    )
    assert (line.period_start, line.period_end, line.credits_applied) == (at(1), at(1, 12), D(0))
    # the same terms again (a replay, a restart): nothing to write
    assert fee_changes("acme", NOVEMBER, snapshots, store(lines)) == []
    # the clock in December: December is the current period; November is not billed again
    assert fee_periods(snapshots, at(3, 12), lookback=0) == [DECEMBER]
    (december,) = fee_changes("acme", DECEMBER, snapshots, {})
    assert (december.amount, december.period_start, december.detail) == (
        D("2000.00"),
        at(1, 12),
        "base fee of enterprise v1 for 31/31 days",
    )


def test_an_upgrade_on_day_15_turns_the_whole_month_line_into_two_prorated_ones():
    growth = snap("growth", "1000.00", 1, at(1))
    first = fee_changes("acme", NOVEMBER, [growth], {})
    assert shown(first) == [
        ("base_fee", "growth", D("1000.00"), ChargeStatus.RATED, "base fee of growth v1 for 30/30 days")
    ]
    # the relay republishes growth up to the 15th and scale from it, with higher versions
    upgraded = [growth, snap("growth", "1000.00", 2, at(1), at(15)), snap("scale", "2000.00", 3, at(15))]
    changes = fee_changes("acme", NOVEMBER, upgraded, store(first))
    # growth 1000 x 14/30 = 466.666.. -> 466.67; scale 2000 x 16/30 = 1066.666.. -> 1066.67
    assert shown(changes) == [
        ("base_fee", "growth", D("466.67"), ChargeStatus.RATED, "base fee of growth v1 for 14/30 days"),
        ("base_fee", "scale", D("1066.67"), ChargeStatus.RATED, "base fee of scale v1 for 16/30 days"),
    ]
    # growth's line keeps its key (its stretch still starts on the 1st): updated in place
    assert changes[0].line_key == first[0].line_key
    assert changes[1].line_key == fee_line_key("acme", "sub-acme", "base_fee", at(1), at(15))
    assert [line.snapshot_version for line in changes] == [3, 3]
    assert [line.quantity for line in changes] == [D("0.466666667"), D("0.533333333")]
    assert fee_changes("acme", NOVEMBER, upgraded, {**store(first), **store(changes)}) == []


def test_a_line_no_longer_wanted_is_superseded_at_zero():
    growth = snap("growth", "1000.00", 1, at(1), subscription="sub-1")
    first = store(fee_changes("acme", NOVEMBER, [growth], {}))
    # a new subscription from the 10th (another id): the old line ends, a new one starts
    moved = [
        growth,
        snap("growth", "1000.00", 2, at(1), at(10), subscription="sub-1"),
        snap("scale", "2000.00", 3, at(10), subscription="sub-2"),
    ]
    changes = fee_changes("acme", NOVEMBER, moved, first)
    # sub-1: 1000 x 9/30 = 300.00; sub-2: 2000 x 21/30 = 1400.00
    assert [(line.subscription_id, line.amount) for line in changes] == [
        ("sub-1", D("300.00")),
        ("sub-2", D("1400.00")),
    ]
    # an undated catalog-file snapshot replaces everything: both dated lines are superseded
    catalog = [*moved, snap("pro", "49.00", 4)]
    stored = {**first, **store(changes)}
    again = fee_changes("acme", NOVEMBER, catalog, stored)
    assert shown(again) == [
        ("base_fee", "pro", D("49.00"), ChargeStatus.RATED, "base fee of pro v1 for 30/30 days"),
        ("base_fee", "growth", D(0), ChargeStatus.SUPERSEDED, "superseded by snapshot version 4"),
        ("base_fee", "scale", D(0), ChargeStatus.SUPERSEDED, "superseded by snapshot version 4"),
    ]
    assert fee_changes("acme", NOVEMBER, catalog, {**stored, **store(again)}) == []


def test_a_cancellation_bills_up_to_its_moment_and_nothing_after():
    growth = snap("growth", "1000.00", 1, at(1))
    cancelled = [
        growth,
        snap("growth", "1000.00", 2, at(1), at(21)),
        snap("", "0", 3, at(21), subscription=None),
    ]
    # 1000 x 20/30 = 666.666.. -> 666.67
    assert [(line.amount, line.detail) for line in fee_changes("acme", NOVEMBER, cancelled, {})] == [
        (D("666.67"), "base fee of growth v1 for 20/30 days")
    ]
    # December: nothing is in force, so no line (the period is still "current" for the clock)
    assert fee_changes("acme", DECEMBER, cancelled, {}) == []


def test_add_ons_are_lines_of_their_own_at_their_override():
    # plan 1000 + 3 seats packs at an overridden 150.00 (list 200) = base_fee 1450 in the snapshot
    pack = AddOnFee(add_on="seats_pack", quantity=3, fee=D("150.00"))
    snapshots = [
        snap("growth", "1450.00", 1, at(1), add_ons=(pack,)),
    ]
    assert shown(fee_changes("acme", NOVEMBER, snapshots, {})) == [
        ("base_fee", "growth", D("1000.00"), ChargeStatus.RATED, "base fee of growth v1 for 30/30 days"),
        (
            "add_on:seats_pack",
            "growth",
            D("450.00"),
            ChargeStatus.RATED,
            "add-on seats_pack x3 for 30/30 days",
        ),
    ]
    # resized to 1 pack on the 16th: 3 x 150 x 15/30 = 225.00, then 1 x 150 x 15/30 = 75.00
    one = AddOnFee(add_on="seats_pack", quantity=1, fee=D("150.00"))
    resized = [
        *snapshots,
        snap("growth", "1450.00", 2, at(1), at(16), add_ons=(pack,)),
        snap("growth", "1150.00", 3, at(16), add_ons=(one,)),
    ]
    assert [(line.feature, line.amount) for line in fee_changes("acme", NOVEMBER, resized, {})] == [
        ("base_fee", D("500.00")),
        ("add_on:seats_pack", D("225.00")),
        ("base_fee", D("500.00")),
        ("add_on:seats_pack", D("75.00")),
    ]


def test_the_periods_billed_are_the_current_one_and_a_bounded_number_before_it():
    dated = [snap("growth", "1000.00", 1, at(15, 9))]
    october = Period(at(1, 10), at(1))
    september = Period(at(1, 9), at(1, 10))
    # a dated snapshot read on Nov 10: the current period and `lookback` periods before it that
    # the snapshot overlaps (it started on Sep 15)
    assert fee_periods(dated, at(10), lookback=1) == [october, NOVEMBER]
    assert fee_periods(dated, at(10), lookback=3) == [september, october, NOVEMBER]
    assert fee_periods(dated, at(10), lookback=3, clock_only=True) == [NOVEMBER]
    # an undated (catalog file) snapshot bills the current period only: a file applied again
    # never rewrites a past period
    assert fee_periods([snap("pro", "49.00", 1)], at(10), lookback=3) == [NOVEMBER]
    # no subscription ever: nothing
    assert fee_periods([snap("", "0", 1, subscription=None)], at(10), lookback=3) == []
    # a future period is never billed before it starts
    assert fee_periods([snap("growth", "1000.00", 1, at(1, 12))], at(10), lookback=3) == [NOVEMBER]
    assert fee_changes("acme", NOVEMBER, [snap("growth", "1000.00", 1, at(1, 12))], {}) == []
    assert terms_version(dated) == 1 and terms_version([]) == 0
