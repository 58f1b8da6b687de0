"""Rating prices each terms segment of an aggregate under the terms in force at its start, with
its included units prorated by their share of the period, and an aggregate without segments
under the terms in force at its last event, never simply the newest. The figures are the domain
README's worked example (Growth upgraded to Scale on 15 November 2026), computed by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from metergate.domain.pricing import ChargeStatus, UnpricedReason
from metergate.domain.rating import RatingFold, check_aggregate, rate_records
from metergate.domain.records import (
    Aggregation,
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    Pricing,
    PricingModel,
    TermsSegment,
    UsageAggregate,
)
from metergate.domain.terms import DatedTerms
from metergate.errors import InvalidInput
from metergate.wire.codec import codec

pytestmark = pytest.mark.unit


def at(day: int, month: int = 11) -> datetime:
    return datetime(2026, month, day, tzinfo=UTC)


NOVEMBER, DECEMBER = at(1), at(1, 12)
PERIOD = "2026-11-01T00:00:00+00:00"
GROWTH_KEY = f"acme|acme|api_calls|{PERIOD}|usage"
SCALE_KEY = f"acme|acme|api_calls|{PERIOD}|usage|2026-11-15T00:00:00+00:00"


def plan(
    key: str, version: int, fee: str, included: int, price: str, start: datetime | None, end: datetime | None
) -> EntitlementSnapshot:
    calls = FeatureEntitlement(
        feature="api_calls",
        kind=FeatureKind.METERED,
        meter="api_calls",
        included=D(included),
        pricing=Pricing(model=PricingModel.PER_UNIT, unit_price=D(price)),
    )
    return EntitlementSnapshot(
        customer_id="acme",
        subscription_id="acme",
        plan_key=key,
        plan_version=1,
        billing_anchor=NOVEMBER,
        base_fee=D(fee),
        features=(calls,),
        version=version,
        updated_at=start or NOVEMBER,
        valid_from=start,
        valid_to=end,
    )


GROWTH = plan("growth", 1, "1000", 10_000_000, "0.0002", NOVEMBER, at(15))  # $0.20 per extra 1,000
SCALE = plan("scale", 2, "2000", 50_000_000, "0.00015", at(15), None)  # $0.15 per extra 1,000


def terms_of(*snapshots: EntitlementSnapshot) -> DatedTerms:
    terms = DatedTerms()
    for snapshot in snapshots:
        terms.remember(snapshot)
    return terms


def aggregate(value: str, version: int, last: datetime, *segments: TermsSegment) -> UsageAggregate:
    return UsageAggregate(
        customer_id="acme",
        meter="api_calls",
        aggregation=Aggregation.SUM,
        period_start=NOVEMBER,
        period_end=DECEMBER,
        value=D(value),
        event_count=sum(s.event_count for s in segments) or 1,
        version=version,
        last_event_at=last,
        last_event_id=f"e{version}",
        subscription_id="acme",
        plan_key="scale" if segments else "growth",
        plan_version=1,
        updated_at=last,
        segments=segments,
    )


def segment(start: datetime, key: str, value: int, count: int) -> TermsSegment:
    return TermsSegment(
        start=start, subscription_id="acme", plan_key=key, plan_version=1, value=D(value), event_count=count
    )


UPGRADED = aggregate(
    "36000000",
    9,
    at(18),
    segment(NOVEMBER, "growth", 6_000_000, 3),
    segment(at(15), "scale", 30_000_000, 2),
)


def rate(terms: DatedTerms, *records: UsageAggregate, fold: RatingFold | None = None) -> RatingFold:
    fold = fold or RatingFold(lines={}, wallets={}, credits={})
    rejected = rate_records(fold, [((i, i), r) for i, r in enumerate(records)], terms, with_credit=set())
    assert [r.rejection for r in rejected] == []
    return fold


def usage(fold: RatingFold) -> dict[str, tuple[object, ...]]:
    return {
        line.line_key: (
            line.plan_key,
            line.quantity,
            line.included_quantity,
            line.billable_quantity,
            line.amount,
            line.event_count,
            line.status,
        )
        for line in fold.changed.values()
        if line.aggregate_key is not None
    }


def wire(snapshot: EntitlementSnapshot) -> EntitlementSnapshot:
    """As rating reads it from the topic (every decimal with Avro's 9 places: 10000000.000000000)."""
    snapshots = codec(EntitlementSnapshot)
    return snapshots.decode(snapshots.encode(snapshot))


@pytest.mark.parametrize("read", [lambda s: s, wire], ids=["in memory", "from the topic"])
def test_an_upgrade_on_day_15_prices_each_part_by_its_plan_with_included_units_prorated(read) -> None:
    fold = rate(terms_of(read(GROWTH), read(SCALE)), UPGRADED)
    # Growth, 1-14 November: 14/30 of 10,000,000 included = 4,666,666.67 -> 4,666,667 (half-up);
    #   6,000,000 - 4,666,667 = 1,333,333 billable x 0.0002 = 266.6666 -> 266.67
    # Scale, 15-30 November: 16/30 of 50,000,000 = 26,666,666.67 -> 26,666,667;
    #   30,000,000 - 26,666,667 = 3,333,333 x 0.00015 = 499.99995 -> 500.00
    assert usage(fold) == {
        GROWTH_KEY: ("growth", D(6_000_000), D(4_666_667), D(1_333_333), D("266.67"), 3, ChargeStatus.RATED),
        SCALE_KEY: ("scale", D(30_000_000), D(26_666_667), D(3_333_333), D("500.00"), 2, ChargeStatus.RATED),
    }
    details = {line.line_key: line.detail for line in fold.changed.values()}
    assert details[GROWTH_KEY] == "1333333 x 0.0002; growth v1 for 14/30 days"
    assert details[SCALE_KEY] == "3333333 x 0.00015; scale v1 for 16/30 days"
    versions = {line.line_key: line.snapshot_version for line in fold.changed.values()}
    assert (versions[GROWTH_KEY], versions[SCALE_KEY]) == (1, 2)


def test_usage_before_the_upgrade_keeps_its_line_and_the_upgrade_adds_the_scale_line() -> None:
    """Version 4 (5,000,000 calls by the 10th, one terms): priced under Growth, the terms in force
    at its last event, not Scale, the newest: 5,000,000 - 4,666,667 = 333,333 x 0.0002 = 66.67.
    Version 9 (the upgrade) re-rates that line to 266.67 under the same key and adds Scale's."""
    terms = terms_of(GROWTH, SCALE)
    before = aggregate("5000000", 4, at(10))
    fold = rate(terms, before)
    assert usage(fold) == {
        GROWTH_KEY: ("growth", D(5_000_000), D(4_666_667), D(333_333), D("66.67"), 1, ChargeStatus.RATED)
    }
    lines = {
        key: {lk: line for lk, line in fold.changed.items() if line.aggregate_key == key}
        for key in [before.key]
    }
    after = rate(terms, UPGRADED, fold=RatingFold(lines=lines, wallets={}, credits={}))
    assert {lk: row[4] for lk, row in usage(after).items()} == {
        GROWTH_KEY: D("266.67"),
        SCALE_KEY: D("500.00"),
    }


def test_a_replay_after_a_catalog_change_prices_as_before() -> None:
    """After the rating, Scale v2 ($0.30 per extra 1,000) is published and the customer moves to it
    on 1 December: Scale's November snapshot is re-sent closed at 1 December (version 3), and the
    new terms start there (version 4). A replay of the November aggregate into a fresh state gives
    the same lines; December's usage is priced under Scale v2."""
    first = usage(rate(terms_of(GROWTH, SCALE), UPGRADED))
    closed = SCALE.model_copy(update={"version": 3, "valid_to": DECEMBER})
    scale_v2 = plan("scale", 4, "2000", 50_000_000, "0.0003", DECEMBER, None).model_copy(
        update={"plan_version": 2}
    )
    changed = terms_of(GROWTH, SCALE, closed, scale_v2)
    assert usage(rate(changed, UPGRADED)) == first
    december = UPGRADED.model_copy(
        update={
            "period_start": DECEMBER,
            "period_end": datetime(2027, 1, 1, tzinfo=UTC),
            "value": D(60_000_000),
            "segments": (),
            "last_event_at": at(3, 12),
            "version": 20,
            "plan_version": 2,  # metering counted it under Scale v2
        }
    )
    (line,) = [line for line in rate(changed, december).changed.values() if line.aggregate_key]
    # all of December under Scale v2: 60,000,000 - 50,000,000 = 10,000,000 x 0.0003 = 3,000.00
    assert (line.plan_version, line.snapshot_version, line.included_quantity, line.amount) == (
        2,
        4,
        D(50_000_000),
        D("3000.00"),
    )


def test_undated_terms_price_the_whole_total_in_full_as_before() -> None:
    """A catalog file's snapshot (no interval) is in force always: no proration, no segment key."""
    undated = GROWTH.model_copy(update={"valid_from": None, "valid_to": None})
    fold = rate(terms_of(undated), aggregate("12000000", 3, at(10)))
    # 12,000,000 - 10,000,000 included = 2,000,000 x 0.0002 = 400.00
    assert usage(fold) == {
        GROWTH_KEY: ("growth", D(12_000_000), D(10_000_000), D(2_000_000), D("400.00"), 1, ChargeStatus.RATED)
    }
    assert fold.changed[GROWTH_KEY].detail == "2000000 x 0.0002"


def test_a_segment_with_no_terms_in_force_is_recorded_unpriced_and_reported() -> None:
    """A subscription starting on the 10th: usage of the 2nd has no terms; it is not billed, and
    the DLQ hears why; the subscribed part (21/30 of the period) is priced."""
    late = GROWTH.model_copy(update={"valid_from": at(10), "valid_to": None})
    nothing = TermsSegment(start=NOVEMBER, value=D(1_000_000), event_count=1)  # no terms: no subscription
    record = aggregate("9000000", 5, at(12), nothing, segment(at(10), "growth", 8_000_000, 2))
    fold = RatingFold(lines={}, wallets={}, credits={})
    rejected = rate_records(fold, [((0, "m"), record)], terms_of(late), with_credit=set())
    assert [r.rejection.reason for r in rejected] == [UnpricedReason.UNKNOWN_PLAN.value]
    lines = {line.line_key: line for line in fold.changed.values() if line.aggregate_key}
    unpriced = lines[f"acme||api_calls|{PERIOD}|usage"]
    assert (unpriced.status, unpriced.unpriced_reason, unpriced.quantity, unpriced.amount) == (
        ChargeStatus.UNPRICED,
        "unknown_plan",
        D(1_000_000),
        D(0),
    )
    priced = lines[f"acme|acme|api_calls|{PERIOD}|usage|2026-11-10T00:00:00+00:00"]
    # 21/30 of 10,000,000 = 7,000,000 included; 8,000,000 - 7,000,000 = 1,000,000 x 0.0002 = 200.00
    assert (priced.included_quantity, priced.amount) == (D(7_000_000), D("200.00"))


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"subscription_id": "acme\x00"}, "segments[1].subscription_id", "segments[1].subscription_id: "),
        ({"plan_key": "x" * 257}, "segments[1].plan_key", "segments[1].plan_key: "),
        ({"value": D(-1)}, "segments[1].value", "segments[1].value: expected a running total >= 0, got -1"),
    ],
)
def test_a_segment_rating_cannot_store_is_refused_naming_it(change, field, message) -> None:
    bad = UPGRADED.model_copy(
        update={"segments": (UPGRADED.segments[0], UPGRADED.segments[1].model_copy(update=change))}
    )
    with pytest.raises(InvalidInput) as refused:
        check_aggregate(bad)
    assert (refused.value.field, refused.value.reason) == (
        field,
        "invalid_value" if field.endswith("value") else "invalid_field",
    )
    assert str(refused.value).startswith(message)
    check_aggregate(UPGRADED)  # its own segments are fine
