"""The fold's fast paths give, to the character, what the general rules give.

Rating's hot path prepares each (snapshot, meter) once, memoises priced results per (figures,
currency, billable quantity) and builds the common case's lines from bare figures
(`pricing.usage_figures`) instead of charges. Each is compared here with the rule it stands for:
`plain` and `round_money` with their definitions, a memoised price with a fresh one, and the
fold's lines with the lines `_line` builds from `rate_usage`'s charges. Figures are compared by
`repr`, so a Decimal's exponent counts too ("1.0" is not "1").
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metergate.domain import pricing
from metergate.domain.pricing import (
    Charge,
    ChargeStatus,
    ChargeType,
    PricingError,
    line_key,
    plain,
    price,
    rate_feature,
    rate_usage,
    round_money,
    validate_pricing,
)
from metergate.domain.rating import AggregateUpdate, RatingFold
from metergate.domain.records import (
    Aggregation,
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    PriceTier,
    Pricing,
    PricingModel,
    UsageAggregate,
)
from metergate.errors import InvalidInput

pytestmark = pytest.mark.unit

P0 = datetime(2026, 3, 1, tzinfo=UTC)
P1 = datetime(2026, 4, 1, tzinfo=UTC)


# -- the definitions the fast forms stand for ----------------------------------------------------


def plain_as_defined(value: Decimal) -> Decimal:
    if value.is_finite() and value == value.to_integral_value():
        return value.quantize(D(1), context=pricing._EXACT)
    return pricing._EXACT.normalize(value)


def round_money_as_defined(amount: Decimal, currency: str) -> Decimal:
    minor = D(1).scaleb(-pricing.minor_units(currency))
    return amount.quantize(minor, rounding=ROUND_HALF_UP, context=pricing._EXACT)


def charge_as_defined(feature: FeatureEntitlement, quantity: Decimal, currency: str) -> Charge:
    """The usage charge of one feature, priced afresh (no memo, no prepared figures)."""
    validate_pricing(feature.pricing)
    included = plain_as_defined(feature.included)
    normal = plain_as_defined(quantity)
    billable = normal - included if normal - included > 0 else D(0)
    priced = price(feature.pricing, billable)
    return Charge(
        charge=ChargeType.USAGE,
        status=ChargeStatus.RATED,
        feature=feature.feature,
        meter=feature.meter,
        currency=currency,
        quantity=normal,
        included_quantity=included,
        billable_quantity=billable,
        pricing_model=feature.pricing.model.value,
        unit_price=priced.unit_price,
        amount=round_money_as_defined(priced.amount, currency),
        detail=priced.detail,
    )


# -- strategies ----------------------------------------------------------------------------------


def decimals(max_digits: int = 12, min_exp: int = -9, max_exp: int = 3) -> st.SearchStrategy[Decimal]:
    """Non-negative decimals in every representation: trailing zeros, positive exponents, -0."""
    return st.builds(
        lambda coefficient, exponent, signed: D(
            (1 if signed and coefficient == 0 else 0, D(coefficient).as_tuple().digits, exponent)
        ),
        st.integers(0, 10**max_digits - 1),
        st.integers(min_exp, max_exp),
        st.booleans(),
    )


@st.composite
def pricings(draw: st.DrawFn) -> Pricing:
    model = draw(st.sampled_from(list(PricingModel)))
    if model in (PricingModel.GRADUATED, PricingModel.VOLUME):
        bounds = sorted(set(draw(st.lists(st.integers(1, 10_000), max_size=3))))
        ups: list[Decimal | None] = [D(b).scaleb(draw(st.integers(-2, 0))) for b in bounds]
        ups = sorted(set(ups))  # type: ignore[type-var]
        tiers = tuple(
            PriceTier(up_to=up, unit_price=draw(decimals(6, -6, 0)), flat_fee=draw(decimals(4, -2, 0)))
            for up in [*ups, None]
        )
        return Pricing(model=model, tiers=tiers)
    size = draw(decimals(4, -2, 2).filter(lambda d: d > 0))
    return Pricing(model=model, unit_price=draw(decimals(8, -12, 1)), package_size=size)


CURRENCIES = st.sampled_from(["USD", "JPY", "BHD", "CLF"])


def feature(
    pricing_: Pricing, included: Decimal, name: str = "calls", meter: str = "calls"
) -> FeatureEntitlement:
    return FeatureEntitlement(
        feature=name, kind=FeatureKind.METERED, meter=meter, included=included, pricing=pricing_
    )


def snapshot(
    features: tuple[FeatureEntitlement, ...], currency: str = "USD", **overrides: object
) -> EntitlementSnapshot:
    values: dict[str, object] = {
        "customer_id": "c1",
        "subscription_id": "sub-1",
        "plan_key": "pro",
        "plan_version": 3,
        "currency": currency,
        "base_fee": D(0),
        "features": features,
        "version": 7,
        "updated_at": P0,
    }
    values.update(overrides)
    return EntitlementSnapshot.model_validate(values)


def update(value: Decimal, version: int = 1, meter: str = "calls") -> AggregateUpdate:
    return AggregateUpdate.of(
        UsageAggregate(
            customer_id="c1",
            meter=meter,
            aggregation=Aggregation.SUM,
            period_start=P0,
            period_end=P1,
            value=value,
            event_count=version,
            version=version,
            last_event_at=P0,
            last_event_id=f"e{version}",
            updated_at=P0,
            plan_key="metering-stamp",
            plan_version=1,
        )
    )


# -- plain and round_money -------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(decimals(30, -12, 6))
def test_plain_is_its_definition(value: Decimal) -> None:
    assert repr(plain(value)) == repr(plain_as_defined(value))


@settings(max_examples=400, deadline=None)
@given(decimals(30, -12, 6), CURRENCIES)
def test_round_money_is_its_definition(value: Decimal, currency: str) -> None:
    assert repr(round_money(value, currency)) == repr(round_money_as_defined(value, currency))
    assert repr(round_money(-value, currency)) == repr(round_money_as_defined(-value, currency))


# -- a memoised price is a fresh one ---------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(pricings(), decimals(6, -3, 0), st.lists(decimals(9, -9, 2), min_size=1, max_size=4), CURRENCIES)
def test_a_charge_priced_from_the_memo_is_the_charge_priced_afresh(
    pricing_: Pricing, included: Decimal, quantities: list[Decimal], currency: str
) -> None:
    try:
        validate_pricing(pricing_)
    except PricingError:
        return
    # the same figures in another object (a customer of the same plan): the memo answers for both
    twin = Pricing.model_validate(pricing_.model_dump())
    for quantity in [*quantities, *quantities]:  # the second round: every price from the memo
        for p in (pricing_, twin):
            f = feature(p, included)
            assert repr(rate_feature(f, quantity, currency)) == repr(charge_as_defined(f, quantity, currency))


def test_figures_equal_in_value_but_not_in_text_are_not_one_memo_entry() -> None:
    zero = feature(Pricing(model=PricingModel.PER_UNIT, unit_price=D("0")), D(0))
    signed = feature(Pricing(model=PricingModel.PER_UNIT, unit_price=D("-0")), D(0))
    assert rate_feature(zero, D(5), "USD").detail == "5 x 0"
    assert rate_feature(signed, D(5), "USD").detail == "5 x -0"
    assert rate_feature(zero, D("5.0"), "USD").detail == "5 x 0"  # a total's plain form: 5
    with_included = feature(Pricing(model=PricingModel.PER_UNIT, unit_price=D(2)), D("0.5"))
    assert rate_feature(with_included, D("5.5"), "USD").detail == "5.0 x 2"  # 5.5 - 0.5, exactly


# -- the fold's lines are the lines of rate_usage's charges ----------------------------------------


def lines_by_the_general_rule(
    aggregate: AggregateUpdate, snap: EntitlementSnapshot
) -> tuple[list[str], str | None]:
    rating = rate_usage(aggregate.meter, aggregate.value, snap)
    subscription = aggregate.subscription_id or snap.subscription_id or ""
    period = aggregate.key.rsplit("|", 1)[1]
    fold = RatingFold(lines={}, wallets={}, credits={})
    lines = []
    for charge in rating.charges:
        lk = line_key(aggregate.customer_id, subscription, charge.feature, period, charge.charge)
        lines.append(repr(fold._line(lk, aggregate.key, aggregate, snap, subscription, charge, None)))
    return lines, None if rating.rejection is None else str(rating.rejection)


def lines_of_the_fold(aggregate: AggregateUpdate, snap: EntitlementSnapshot) -> tuple[list[str], str | None]:
    fold = RatingFold(lines={}, wallets={}, credits={})
    applied = fold.apply(aggregate, snap)
    return [repr(line) for line in applied.lines], None if applied.rejection is None else str(
        applied.rejection
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(pricings(), decimals(6, -3, 0)), min_size=1, max_size=3),
    st.lists(decimals(12, -9, 2), min_size=1, max_size=3),
    CURRENCIES,
    st.booleans(),
)
def test_the_fold_rates_as_rate_usage_does(
    features: list[tuple[Pricing, Decimal]], totals: list[Decimal], currency: str, subscribed: bool
) -> None:
    snap = snapshot(
        tuple(feature(p, included, name=f"f{index}") for index, (p, included) in enumerate(features)),
        currency,
        subscription_id="sub-1" if subscribed else None,
    )
    for total in totals:
        aggregate = update(total)
        assert lines_of_the_fold(aggregate, snap) == lines_by_the_general_rule(aggregate, snap)


def test_the_fold_reports_a_pricing_that_cannot_be_applied_as_rate_usage_does() -> None:
    bad = Pricing(model=PricingModel.PACKAGE, unit_price=D(5), package_size=D(0))
    good = Pricing(model=PricingModel.PER_UNIT, unit_price=D("0.25"))
    snap = snapshot((feature(good, D(10), name="a"), feature(bad, D(0), name="b")))
    for total in (D("12.000000000"), D(40)):  # twice: the prepared table remembers it needs the loop
        fold_lines, fold_rejection = lines_of_the_fold(update(total), snap)
        assert (fold_lines, fold_rejection) == lines_by_the_general_rule(update(total), snap)
        assert fold_rejection is not None and "package_size" in fold_rejection
        assert "status=<ChargeStatus.UNPRICED" in fold_lines[1]


def test_a_meter_not_in_the_plan_and_a_bad_total_go_the_general_way() -> None:
    snap = snapshot((feature(Pricing(model=PricingModel.PER_UNIT, unit_price=D(1)), D(0)),))
    assert lines_of_the_fold(update(D(3), meter="other"), snap) == lines_by_the_general_rule(
        update(D(3), meter="other"), snap
    )
    with pytest.raises(InvalidInput, match="value: expected a finite running total >= 0"):
        RatingFold(lines={}, wallets={}, credits={}).apply(update(D(3))._replace(value=D("Infinity")), snap)
    with pytest.raises(InvalidInput, match="currency"):
        RatingFold(lines={}, wallets={}, credits={}).apply(update(D(3)), snapshot(snap.features, "usd"))
