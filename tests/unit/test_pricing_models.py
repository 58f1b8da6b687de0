"""Each pricing model against hand-computed Decimal figures, and the properties pricing must keep."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metergate.domain.pricing import (
    ChargeStatus,
    PricingError,
    UnpricedReason,
    base_fee_charge,
    graduated_parts,
    price,
    rate_feature,
    rate_usage,
    round_money,
    started_packages,
    validate_pricing,
)
from metergate.domain.records import (
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    PriceTier,
    Pricing,
    PricingModel,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 15, tzinfo=UTC)


def feature(
    pricing: Pricing, included: str = "0", name: str = "api_calls", meter: str = "api_calls"
) -> FeatureEntitlement:
    return FeatureEntitlement(
        feature=name, kind=FeatureKind.METERED, meter=meter, included=D(included), pricing=pricing
    )


def amount(pricing: Pricing, quantity: str, included: str = "0", currency: str = "USD") -> D:
    return rate_feature(feature(pricing, included), D(quantity), currency).amount


PER_UNIT = Pricing(model=PricingModel.PER_UNIT, unit_price=D("0.002"))
PACKAGE = Pricing(model=PricingModel.PACKAGE, unit_price=D("15"), package_size=D("100"))
TIERS = (
    PriceTier(up_to=D("1000"), unit_price=D("0.10")),
    PriceTier(up_to=D("5000"), unit_price=D("0.08"), flat_fee=D("5")),
    PriceTier(up_to=None, unit_price=D("0.05")),
)
GRADUATED = Pricing(model=PricingModel.GRADUATED, tiers=TIERS)
VOLUME = Pricing(model=PricingModel.VOLUME, tiers=TIERS)


# -- hand-computed figures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "included", "expected"),
    [
        ("0", "0", "0.00"),
        ("1", "0", "0.00"),  # 0.002 rounds half-up to 0.00
        ("2.5", "0", "0.01"),  # 0.005 -> 0.01 (half-up, not banker's)
        ("1234", "0", "2.47"),  # 2.468
        ("1234", "1000", "0.47"),  # 234 x 0.002 = 0.468
        ("999", "1000", "0.00"),  # below the included units
        ("1000", "1000", "0.00"),  # exactly the included units
    ],
)
def test_per_unit(quantity: str, included: str, expected: str) -> None:
    assert amount(PER_UNIT, quantity, included) == D(expected)


@pytest.mark.parametrize(
    ("quantity", "included", "expected"),
    [
        ("0", "0", "0.00"),
        ("1", "0", "15.00"),  # a started block
        ("100", "0", "15.00"),  # package boundary hit exactly: one block
        ("101", "0", "30.00"),
        ("200", "0", "30.00"),
        ("250", "50", "30.00"),  # 200 billable: exactly two blocks
        ("251", "50", "45.00"),
        ("0.5", "0", "15.00"),
        ("40", "50", "0.00"),  # below the included units
    ],
)
def test_package(quantity: str, included: str, expected: str) -> None:
    assert amount(PACKAGE, quantity, included) == D(expected)


@pytest.mark.parametrize(
    ("quantity", "included", "expected"),
    [
        ("0", "0", "0.00"),
        ("1", "0", "0.10"),
        ("1000", "0", "100.00"),  # tier boundary hit exactly: all in tier 1
        ("1001", "0", "105.08"),  # 100 + 1 x 0.08 + 5 flat fee of tier 2
        ("5000", "0", "425.00"),  # 100 + 4000 x 0.08 + 5
        ("5001", "0", "425.05"),
        ("7500", "0", "550.00"),  # 100 + 325 + 2500 x 0.05
        ("1500", "500", "100.00"),  # 1000 billable
        ("400", "500", "0.00"),  # below the included units
        ("1000.5", "0", "105.04"),  # 100 + 0.5 x 0.08 + 5 = 105.04
    ],
)
def test_graduated(quantity: str, included: str, expected: str) -> None:
    assert amount(GRADUATED, quantity, included) == D(expected)


@pytest.mark.parametrize(
    ("quantity", "included", "expected"),
    [
        ("0", "0", "0.00"),  # no flat fee without billable units
        ("1", "0", "0.10"),
        ("1000", "0", "100.00"),  # boundary hit exactly: tier 1 for all 1000
        ("1001", "0", "85.08"),  # 1001 x 0.08 + 5: a volume discount lowers the total
        ("5000", "0", "405.00"),  # 5000 x 0.08 + 5
        ("5001", "0", "250.05"),  # 5001 x 0.05
        ("1500", "500", "100.00"),
        ("10", "500", "0.00"),
    ],
)
def test_volume(quantity: str, included: str, expected: str) -> None:
    assert amount(VOLUME, quantity, included) == D(expected)


def test_model_none_tracks_usage_at_zero() -> None:
    charge = rate_feature(feature(Pricing(), "10"), D("12345"), "USD")
    assert (charge.amount, charge.billable_quantity, charge.status) == (
        D("0.00"),
        D("12335"),
        ChargeStatus.RATED,
    )


@pytest.mark.parametrize(
    ("currency", "value", "expected"),
    [
        ("USD", "1.005", "1.01"),
        ("USD", "1.004999", "1.00"),
        ("JPY", "1234.5", "1235"),
        ("JPY", "1234.49", "1234"),
        ("KWD", "1.0005", "1.001"),
        ("EUR", "-0.005", "-0.01"),
    ],
)
def test_rounding_is_half_up_to_the_minor_unit(currency: str, value: str, expected: str) -> None:
    rounded = round_money(D(value), currency)
    assert rounded == D(expected)
    assert str(rounded) == expected


def test_rounding_happens_once_at_the_line_not_per_tier() -> None:
    # 3 tiers each worth 0.004: rounded per tier would be 0.00; once at the line 0.012 -> 0.01
    tiers = (
        PriceTier(up_to=D("1"), unit_price=D("0.004")),
        PriceTier(up_to=D("2"), unit_price=D("0.004")),
        PriceTier(up_to=None, unit_price=D("0.004")),
    )
    assert amount(Pricing(model=PricingModel.GRADUATED, tiers=tiers), "3") == D("0.01")


def test_large_quantities_are_exact() -> None:
    quantity = D("99999999999999999999999999999.999999999")  # 38 digits
    pricing = Pricing(model=PricingModel.PER_UNIT, unit_price=D("0.000000000001"))
    # Decimal's default 28-digit context would round this product; pricing keeps every digit
    assert price(pricing, quantity).amount == D("99999999999999999.999999999999999999999")
    assert amount(pricing, str(quantity)) == D("100000000000000000.00")


def test_price_override_in_the_snapshot_is_what_is_charged() -> None:
    # the catalog resolves a contract's override into the customer's snapshot: rating charges it
    list_price = snapshot(Pricing(model=PricingModel.PER_UNIT, unit_price=D("0.01")))
    contract = snapshot(Pricing(model=PricingModel.PER_UNIT, unit_price=D("0.006")))
    # 1000 used, 100 included: 900 billable
    assert rate_usage("api_calls", D("1000"), list_price).charges[0].amount == D("9.00")
    assert rate_usage("api_calls", D("1000"), contract).charges[0].amount == D("5.40")


def snapshot(pricing: Pricing, **overrides: object) -> EntitlementSnapshot:
    values: dict[str, object] = {
        "customer_id": "acme",
        "subscription_id": "sub-1",
        "plan_key": "pro",
        "plan_version": 2,
        "currency": "EUR",
        "base_fee": D("49"),
        "features": (feature(pricing, "100"), FeatureEntitlement(feature="sso", kind=FeatureKind.BOOLEAN)),
        "updated_at": NOW,
    }
    values.update(overrides)
    return EntitlementSnapshot.model_validate(values)


def test_rate_usage_uses_the_plan_currency_and_included_units() -> None:
    rating = rate_usage("api_calls", D("1100"), snapshot(PER_UNIT))
    (charge,) = rating.charges
    assert rating.rejection is None
    assert (charge.currency, charge.billable_quantity, charge.amount) == ("EUR", D("1000"), D("2.00"))


def test_base_fee_is_a_charge_of_its_own() -> None:
    charge = base_fee_charge(snapshot(PER_UNIT, currency="JPY", base_fee=D("4900.4")))
    assert charge is not None
    assert (charge.amount, charge.quantity, charge.currency) == (D("4900"), D(1), "JPY")
    assert base_fee_charge(snapshot(PER_UNIT, subscription_id=None)) is None
    assert base_fee_charge(snapshot(PER_UNIT, base_fee=D(0))) is None


def test_unknown_customer_is_recorded_unpriced_and_rejected() -> None:
    rating = rate_usage("api_calls", D("5"), None)
    (charge,) = rating.charges
    assert (charge.status, charge.amount, charge.quantity) == (ChargeStatus.UNPRICED, D(0), D(5))
    assert charge.unpriced_reason is UnpricedReason.UNKNOWN_PLAN
    assert rating.rejection is not None and rating.rejection.reason == "unknown_plan"


def test_meter_outside_the_plan_is_recorded_unpriced_without_rejection() -> None:
    rating = rate_usage("storage_gb", D("5"), snapshot(PER_UNIT))
    assert rating.rejection is None
    assert rating.charges[0].unpriced_reason is UnpricedReason.METER_NOT_IN_PLAN
    no_sub = rate_usage("api_calls", D("5"), snapshot(PER_UNIT, subscription_id=None))
    assert no_sub.rejection is None
    assert no_sub.charges[0].unpriced_reason is UnpricedReason.NO_SUBSCRIPTION


def test_invalid_pricing_is_rejected_naming_the_field() -> None:
    bad = Pricing(model=PricingModel.PACKAGE, unit_price=D(1), package_size=D(0))
    rating = rate_usage("api_calls", D("5"), snapshot(bad))
    assert rating.charges[0].unpriced_reason is UnpricedReason.INVALID_PRICING
    assert rating.rejection is not None
    assert rating.rejection.reason == "invalid_pricing"
    assert rating.rejection.field == "features.api_calls.pricing.package_size"


@pytest.mark.parametrize(
    ("tiers", "field"),
    [
        ((), "pricing.tiers"),
        ((PriceTier(up_to=D(10), unit_price=D(1)),), "pricing.tiers[0].up_to"),
        (
            (PriceTier(up_to=None, unit_price=D(1)), PriceTier(up_to=None, unit_price=D(1))),
            "pricing.tiers[0].up_to",
        ),
        (
            (
                PriceTier(up_to=D(10), unit_price=D(1)),
                PriceTier(up_to=D(10), unit_price=D(1)),
                PriceTier(up_to=None, unit_price=D(1)),
            ),
            "pricing.tiers[1].up_to",
        ),
        ((PriceTier(up_to=None, unit_price=D(-1)),), "pricing.tiers[0]"),
    ],
)
def test_bad_tiers_are_refused(tiers: tuple[PriceTier, ...], field: str) -> None:
    with pytest.raises(PricingError) as caught:
        validate_pricing(Pricing(model=PricingModel.GRADUATED, tiers=tiers))
    assert caught.value.field == field


def test_bad_currency_is_refused() -> None:
    rating = rate_usage
    with pytest.raises(PricingError) as caught:
        rating("api_calls", D(1), snapshot(PER_UNIT, currency="usd"))
    assert caught.value.reason == "invalid_currency"


# -- properties --------------------------------------------------------------------------------

quantities = st.decimals(min_value=0, max_value=D("1e12"), places=3, allow_nan=False, allow_infinity=False)
prices = st.decimals(min_value=0, max_value=D("1000"), places=6, allow_nan=False, allow_infinity=False)


@st.composite
def tier_lists(draw: st.DrawFn, *, rising: bool = False) -> tuple[PriceTier, ...]:
    bounds = sorted(draw(st.sets(st.decimals(min_value=1, max_value=D("1e6"), places=2), max_size=4)))
    unit_prices = draw(st.lists(prices, min_size=len(bounds) + 1, max_size=len(bounds) + 1))
    fees = draw(st.lists(prices, min_size=len(bounds) + 1, max_size=len(bounds) + 1))
    if rising:  # a volume schedule that never gets cheaper per unit nor in fee
        unit_prices, fees = sorted(unit_prices), sorted(fees)
    ups: list[D | None] = [*bounds, None]
    return tuple(
        PriceTier(up_to=u, unit_price=p, flat_fee=f) for u, p, f in zip(ups, unit_prices, fees, strict=True)
    )


@st.composite
def pricings(draw: st.DrawFn) -> Pricing:
    model = draw(st.sampled_from(list(PricingModel)))
    if model is PricingModel.VOLUME:
        return Pricing(model=model, tiers=draw(tier_lists(rising=True)))
    if model is PricingModel.GRADUATED:
        return Pricing(model=model, tiers=draw(tier_lists()))
    size = draw(st.decimals(min_value=D("0.5"), max_value=D("1e4"), places=1))
    return Pricing(model=model, unit_price=draw(prices), package_size=size)


@settings(max_examples=400)
@given(pricings(), quantities, quantities, st.decimals(min_value=0, max_value=D("1e6"), places=2))
def test_amount_never_decreases_when_usage_grows(pricing: Pricing, a: D, b: D, included: D) -> None:
    low, high = sorted((a, b))
    f = feature(pricing, str(included))
    assert rate_feature(f, high, "USD").amount >= rate_feature(f, low, "USD").amount


@settings(max_examples=300)
@given(tier_lists(), quantities, quantities)
def test_volume_amount_never_decreases_inside_a_tier(tiers: tuple[PriceTier, ...], a: D, b: D) -> None:
    pricing = Pricing(model=PricingModel.VOLUME, tiers=tiers)
    low, high = sorted((a, b))
    bounds = [D(0)] + [t.up_to for t in tiers if t.up_to is not None]

    def tier_of(q: D) -> int:
        return sum(1 for bound in bounds[1:] if q > bound)

    if low > 0 and tier_of(low) == tier_of(high):
        assert price(pricing, high).amount >= price(pricing, low).amount


@settings(max_examples=400)
@given(tier_lists(), quantities)
def test_graduated_equals_the_sum_of_its_tiers(tiers: tuple[PriceTier, ...], quantity: D) -> None:
    # independent computation: each tier alone, priced per unit over the slice of usage it covers
    total = D(0)
    lower = D(0)
    for tier in tiers:
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        units = max(upper - lower, D(0))
        if units > 0:
            total += (
                price(Pricing(model=PricingModel.PER_UNIT, unit_price=tier.unit_price), units).amount
                + tier.flat_fee
            )
        if tier.up_to is None:
            break
        lower = tier.up_to
    assert price(Pricing(model=PricingModel.GRADUATED, tiers=tiers), quantity).amount == total
    assert sum((part for _, _, part in graduated_parts(tiers, quantity)), D(0)) == total


@settings(max_examples=200)
@given(quantities, st.decimals(min_value=D("0.001"), max_value=D("1e4"), places=3))
def test_packages_cover_the_usage_with_less_than_one_spare_block(quantity: D, size: D) -> None:
    blocks = started_packages(quantity, size)
    assert blocks == blocks.to_integral_value()
    assert blocks * size >= quantity
    assert (blocks - 1) * size < quantity or blocks == 0


@settings(max_examples=200)
@given(st.decimals(min_value=-D("1e9"), max_value=D("1e9"), places=6), st.sampled_from(["USD", "JPY", "KWD"]))
def test_rounding_is_within_half_a_minor_unit(value: D, currency: str) -> None:
    rounded = round_money(value, currency)
    unit = {"USD": D("0.01"), "JPY": D(1), "KWD": D("0.001")}[currency]
    assert abs(rounded - value) <= unit / 2
    assert round_money(rounded, currency) == rounded
