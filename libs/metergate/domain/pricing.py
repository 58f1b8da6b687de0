"""Pricing: from a running usage total and a customer's resolved entitlements to charges (pure).

Rules (the same ones `services/rating/README.md` states for finance):

- **Included units first.** A metered feature's `included` units are covered by the base fee; every
  pricing model applies to the *billable* quantity, `max(quantity - included, 0)`.
- **Models** (`Pricing.model`):
  - `none`: usage is tracked, the amount is zero;
  - `per_unit`: billable x `unit_price`;
  - `package`: every *started* block of `package_size` units costs `unit_price`
    (`ceil(billable / package_size) x unit_price`; a block filled exactly is not a started new one);
  - `graduated`: the billable quantity is cut into tiers; each tier prices the units that fall in
    it at its own `unit_price`, plus its `flat_fee` once when any unit falls in it. The total is
    the sum of the tiers;
  - `volume`: the whole billable quantity is priced at the tier it falls in: billable x that
    tier's `unit_price` + that tier's `flat_fee`.
  Tier bounds (`up_to`) are inclusive and cumulative over the billable quantity, strictly
  increasing; the last tier is unbounded (`up_to = None`). Zero billable units cost nothing in
  every model (no flat fee, no package).
- **Base fee** per billing period, a charge of its own (quantity 1).
- **Price overrides** per subscription/contract are already applied by the catalog: the snapshot
  is resolved per customer, so its `Pricing` *is* the price agreed for that subscription.
- **Currency per plan** (`EntitlementSnapshot.currency`, ISO 4217).
- **Rounding happens once**, on the charge amount, to the currency's minor unit, half-up. Every
  intermediate figure is exact: the arithmetic runs in a 100-digit decimal context that traps
  inexact overflow, so nothing is rounded silently (Decimal's default context keeps 28 digits,
  which a 38-digit quantity times a 12-decimal price exceeds).
- **Monotone.** For `none`, `per_unit`, `package` and `graduated` the amount never decreases when
  usage grows. `volume` is monotone inside a tier; across a tier boundary it falls when the next
  tier is cheaper - that is what a volume discount is. The credit ledger handles a falling amount
  (see `metergate.domain.ledger`).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from decimal import (
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)
from functools import cache
from typing import NamedTuple

from metergate.domain.records import (
    EntitlementSnapshot,
    FeatureEntitlement,
    PriceTier,
    Pricing,
    PricingModel,
    key_part,
)
from metergate.errors import InvalidInput

ZERO = Decimal(0)
ONE = Decimal(1)

#: Exact arithmetic: products and sums of 38-digit quantities and 38-digit prices fit in 100 digits.
#: Used through its methods (no thread-local context switching on the hot path).
_EXACT = Context(prec=100, rounding=ROUND_HALF_UP, traps=[InvalidOperation, DivisionByZero, Overflow])
_add, _sub, _mul = _EXACT.add, _EXACT.subtract, _EXACT.multiply
#: (a context's own methods take no keywords: half the cost of `value.quantize(q, context=_EXACT)`)
_quantize, _normalize, _integral = _EXACT.quantize, _EXACT.normalize, _EXACT.to_integral_value

#: ISO 4217 minor units that are not 2 (every other currency has 2 decimals).
_MINOR_UNITS: dict[str, int] = {
    **dict.fromkeys(
        ("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF").split(),
        0,
    ),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
    **dict.fromkeys("CLF UYW".split(), 4),
}


class PricingError(InvalidInput):
    """A price that cannot be applied (bad tiers, package size, currency); the record goes to the DLQ."""

    reason = "invalid_pricing"


class ChargeType(enum.StrEnum):
    USAGE = "usage"
    BASE_FEE = "base_fee"


class ChargeStatus(enum.StrEnum):
    RATED = "rated"  # priced with the customer's plan
    UNPRICED = "unpriced"  # usage recorded at zero: see `unpriced_reason`
    SUPERSEDED = "superseded"  # an earlier rating of the same aggregate that no longer applies


class UnpricedReason(enum.StrEnum):
    UNKNOWN_PLAN = "unknown_plan"  # no entitlement snapshot for the customer (also sent to the DLQ)
    NO_SUBSCRIPTION = "no_subscription"  # snapshot without a subscription: nothing is priced
    METER_NOT_IN_PLAN = "meter_not_in_plan"  # the plan has no metered feature on this meter
    INVALID_PRICING = "invalid_pricing"  # the feature's pricing cannot be applied (also DLQ)


@cache
def minor_units(currency: str) -> int:
    """Decimals of the currency's minor unit (ISO 4217); 2 unless listed otherwise."""
    if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        raise PricingError(
            f"currency: expected an ISO 4217 code of three capital letters, got {currency!r}",
            reason="invalid_currency",
            field="currency",
        )
    return _MINOR_UNITS.get(currency, 2)


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round once, to the currency's minor unit, half-up (0.005 USD -> 0.01; -0.005 -> -0.01)."""
    return _quantize(amount, _minor_unit(currency))  # _EXACT rounds half-up


@cache
def _minor_unit(currency: str) -> Decimal:
    return ONE.scaleb(-minor_units(currency))


def is_minor_exact(amount: Decimal, currency: str) -> bool:
    """True when `amount` needs no rounding in `currency` (credit grants must be such amounts)."""
    return round_money(amount, currency) == amount


def plain(value: Decimal) -> Decimal:
    """The same number without trailing zeros (Avro gives quantities 9 decimals, prices 12), never in
    exponent notation, never rounded: "1234.000000000" -> "1234", "0.002000000000" -> "0.002"."""
    if value.is_finite() and value == _integral(value):
        return _quantize(value, ONE)  # "1200.000" -> "1200" (normalize gives 1.2E+3)
    return _normalize(value)


def billable_quantity(quantity: Decimal, included: Decimal) -> Decimal:
    """Units beyond the included ones; never negative."""
    beyond = _sub(quantity, included)
    return beyond if beyond > 0 else ZERO


def validate_pricing(pricing: Pricing, *, where: str = "pricing") -> None:
    """Raise PricingError naming the field when `pricing` cannot be applied."""
    if pricing.unit_price < 0:
        raise PricingError(
            f"{where}.unit_price: expected >= 0, got {pricing.unit_price}", field=f"{where}.unit_price"
        )
    if pricing.model is PricingModel.PACKAGE and pricing.package_size <= 0:
        raise PricingError(
            f"{where}.package_size: expected a positive number of units, got {pricing.package_size}",
            field=f"{where}.package_size",
        )
    if pricing.model in (PricingModel.GRADUATED, PricingModel.VOLUME):
        _validate_tiers(pricing.tiers, where=f"{where}.tiers")


def _validate_tiers(tiers: tuple[PriceTier, ...], *, where: str) -> None:
    if not tiers:
        raise PricingError(f"{where}: expected at least one tier, got none", field=where)
    previous = ZERO
    last = len(tiers) - 1
    for index, tier in enumerate(tiers):
        if tier.unit_price < 0 or tier.flat_fee < 0:
            name = f"{where}[{index}]"
            raise PricingError(
                f"{name}: expected unit_price and flat_fee >= 0, got {tier.unit_price} and {tier.flat_fee}",
                field=name,
            )
        if tier.up_to is None:
            if index != last:
                name = f"{where}[{index}]"
                raise PricingError(
                    f"{name}.up_to: only the last tier may be unbounded", field=f"{name}.up_to"
                )
            continue
        if index == last:
            name = f"{where}[{index}]"
            raise PricingError(
                f"{name}.up_to: the last tier must be unbounded (up_to null), got {tier.up_to}",
                field=f"{name}.up_to",
            )
        if tier.up_to <= previous:
            name = f"{where}[{index}]"
            raise PricingError(
                f"{name}.up_to: expected tiers in strictly increasing order (> {previous}), got {tier.up_to}",
                field=f"{name}.up_to",
            )
        previous = tier.up_to


class Price(NamedTuple):
    """The unrounded price of a billable quantity and the unit price applied (None when mixed)."""

    amount: Decimal
    unit_price: Decimal | None
    detail: str  # how the amount was made, for people: "2 x 15 (package of 100)"


class _Figures(NamedTuple):
    """A pricing's figures as rating uses them, in plain form (computed once per Pricing object)."""

    pricing: Pricing  # the object itself: kept, so its id() (the memo key) stays its own
    model: PricingModel
    unit_price: Decimal
    package_size: Decimal
    tiers: tuple[tuple[Decimal | None, Decimal, Decimal], ...]  # (up_to, unit_price, flat_fee)
    headline: Decimal | None  # the unit price shown when nothing is billable (as given)
    #: the figures as text (exact: a Decimal's text names its sign, digits and exponent, and holds
    #: no "|", "," or ";"): pricings with the same `key` price every billable quantity alike, to
    #: the character (the `_PRICED` memo)
    key: str


#: id(pricing) -> its figures (bounded memo; pricings are frozen models)
_FIGURES: dict[int, _Figures] = {}


def _figures(pricing: Pricing) -> _Figures:
    figures = _FIGURES.get(id(pricing))
    if figures is not None and figures.pricing is pricing:
        return figures
    unit_price, package_size = plain(pricing.unit_price), plain(pricing.package_size)
    tiers = tuple(
        (None if tier.up_to is None else plain(tier.up_to), plain(tier.unit_price), plain(tier.flat_fee))
        for tier in pricing.tiers
    )
    key = f"{pricing.model.value}|{unit_price!s}|{package_size!s}|" + ";".join(
        f"{up_to!s},{unit!s},{flat!s}" for up_to, unit, flat in tiers
    )
    figures = _Figures(pricing, pricing.model, unit_price, package_size, tiers, _headline_price(pricing), key)
    if len(_FIGURES) >= 65536:
        _FIGURES.clear()
    _FIGURES[id(pricing)] = figures
    return figures


def price(pricing: Pricing, billable: Decimal) -> Price:
    """Unrounded amount of `billable` units under `pricing` (which must be valid)."""
    return _price(_figures(pricing), billable)


def _price(figures: _Figures, billable: Decimal) -> Price:
    if billable <= 0:
        return Price(ZERO, figures.headline, "no billable units")
    model = figures.model
    if model is PricingModel.NONE:
        return Price(ZERO, None, "not priced")
    if model is PricingModel.PER_UNIT:
        unit = figures.unit_price
        return Price(_mul(billable, unit), unit, f"{billable} x {unit}")
    if model is PricingModel.PACKAGE:
        unit, size = figures.unit_price, figures.package_size
        packages = started_packages(billable, size)
        return Price(_mul(packages, unit), unit, f"{packages} x {unit} (package of {size})")
    if model is PricingModel.GRADUATED:
        parts = _graduated_parts(figures.tiers, billable)
        amount = ZERO
        for _, _, part in parts:
            amount = _add(amount, part)
        detail = " + ".join(f"tier {index + 1}: {units} units = {part}" for index, units, part in parts)
        return Price(amount, None, detail)
    if model is PricingModel.VOLUME:
        for index, (up_to, unit, flat) in enumerate(figures.tiers):
            if up_to is None or billable <= up_to:
                fee = f" + {flat}" if flat else ""
                return Price(
                    _add(_mul(billable, unit), flat), unit, f"tier {index + 1}: {billable} x {unit}{fee}"
                )
        raise PricingError("pricing.tiers: the last tier must be unbounded", field="pricing.tiers")
    raise PricingError(f"pricing.model: unknown model {model!r}", field="pricing.model")


def _headline_price(pricing: Pricing) -> Decimal | None:
    if pricing.model in (PricingModel.PER_UNIT, PricingModel.PACKAGE):
        return pricing.unit_price
    return None


def started_packages(billable: Decimal, package_size: Decimal) -> Decimal:
    """Blocks of `package_size` needed for `billable` units: ceil(billable / package_size), exactly."""
    whole, rest = _EXACT.divmod(billable, package_size)
    return _add(whole, ONE) if rest else whole


def graduated_parts(tiers: tuple[PriceTier, ...], billable: Decimal) -> list[tuple[int, Decimal, Decimal]]:
    """(tier index, units in the tier, amount of the tier) for every tier `billable` reaches."""
    return _graduated_parts(
        tuple(
            (None if tier.up_to is None else plain(tier.up_to), plain(tier.unit_price), plain(tier.flat_fee))
            for tier in tiers
        ),
        billable,
    )


def _graduated_parts(
    tiers: tuple[tuple[Decimal | None, Decimal, Decimal], ...], billable: Decimal
) -> list[tuple[int, Decimal, Decimal]]:
    parts: list[tuple[int, Decimal, Decimal]] = []
    lower = ZERO
    for index, (up_to, unit_price, flat_fee) in enumerate(tiers):
        if billable <= lower:
            break
        upper = billable if up_to is None else min(billable, up_to)
        units = _sub(upper, lower)
        parts.append((index, units, _add(_mul(units, unit_price), flat_fee)))
        if up_to is None:
            break
        lower = up_to
    return parts


def volume_tier(tiers: tuple[PriceTier, ...], billable: Decimal) -> tuple[int, PriceTier]:
    """The tier the whole quantity falls in (bounds inclusive)."""
    for index, tier in enumerate(tiers):
        if tier.up_to is None or billable <= tier.up_to:
            return index, tier
    raise PricingError("pricing.tiers: the last tier must be unbounded", field="pricing.tiers")


class Charge(NamedTuple):
    """One billable line of one customer's period, before it is stored (amount already rounded)."""

    charge: ChargeType
    status: ChargeStatus
    feature: str
    meter: str | None
    currency: str
    quantity: Decimal
    included_quantity: Decimal
    billable_quantity: Decimal
    pricing_model: str
    unit_price: Decimal | None
    amount: Decimal
    detail: str
    unpriced_reason: UnpricedReason | None = None


class _RatedFeature(NamedTuple):
    """A metered feature whose pricing is valid, with its figures (computed once per feature object)."""

    feature: FeatureEntitlement  # kept, so its id() (the memo key) stays its own
    included: Decimal  # plain
    pricing_model: str
    figures: _Figures
    name: str  # feature.feature (read here, the model's own attributes are not read per record)


#: id(feature) -> the feature validated and prepared (bounded memo; features are frozen models)
_RATED: dict[int, _RatedFeature] = {}


def _rated_feature(feature: FeatureEntitlement) -> _RatedFeature:
    rated = _RATED.get(id(feature))
    if rated is not None and rated.feature is feature:
        return rated
    validate_pricing(feature.pricing, where=f"features.{feature.feature}.pricing")  # not memoised if bad
    rated = _RatedFeature(
        feature,
        plain(feature.included),
        feature.pricing.model.value,
        _figures(feature.pricing),
        feature.feature,
    )
    if len(_RATED) >= 65536:
        _RATED.clear()
    _RATED[id(feature)] = rated
    return rated


_new = tuple.__new__  # builds a NamedTuple from a tuple of every field, without its Python-level __new__


class _Priced(NamedTuple):
    """What a billable quantity costs under figures of one `_Figures.key`, in one currency."""

    unit_price: Decimal | None
    amount: Decimal  # rounded to the currency's minor unit
    detail: str


#: (figures key, currency, str(billable)) -> the priced result. Customers on the same plan reach
#: the same billable quantities; a quantity's text names it exactly (digits and exponent), so a hit
#: is what pricing it again would give, to the character. Bounded: a clear costs one pricing a key.
_PRICED: dict[tuple[str, str, str], _Priced] = {}
_MAX_PRICED = 16384  # ~0.5 kB an entry (a graduated detail is the longest): ~8 MB at most


def rate_feature(feature: FeatureEntitlement, quantity: Decimal, currency: str) -> Charge:
    """The usage charge of one metered feature for a running total (raises PricingError)."""
    rated = _rated_feature(feature)
    return _rate(rated, plain(quantity), currency)


def _priced(
    rated: _RatedFeature, quantity: Decimal, currency: str
) -> tuple[Decimal, Decimal | None, Decimal, str]:
    """(billable quantity, unit price, amount rounded, detail) of a running total in plain form
    under a prepared feature: the figures of its usage charge (`_rate`; the fold's lines)."""
    billable = _sub(quantity, rated.included)
    figures = rated.figures
    if billable <= 0:  # nothing billable: no arithmetic, the zero amount of the currency
        return ZERO, figures.headline, _zero_amount(currency), "no billable units"
    memo_key = (figures.key, currency, str(billable))
    priced = _PRICED.get(memo_key)
    if priced is None:
        price_ = _price(figures, billable)
        priced = _Priced(price_.unit_price, round_money(price_.amount, currency), price_.detail)
        if len(_PRICED) >= _MAX_PRICED:
            _PRICED.clear()
        _PRICED[memo_key] = priced
    return billable, priced[0], priced[1], priced[2]


def _rate(rated: _RatedFeature, quantity: Decimal, currency: str) -> Charge:
    """`rate_feature` for a prepared feature and a quantity already in plain form (the hot path)."""
    billable, unit_price, amount, detail = _priced(rated, quantity, currency)
    feature = rated.feature
    # every field, in field order, without the NamedTuple's Python-level __new__ (~0.15 us less)
    return _new(  # type: ignore[no-any-return]
        Charge,
        (
            ChargeType.USAGE,  # charge
            ChargeStatus.RATED,  # status
            feature.feature,  # feature
            feature.meter,  # meter
            currency,  # currency
            quantity,  # quantity
            rated.included,  # included_quantity
            billable,  # billable_quantity
            rated.pricing_model,  # pricing_model
            unit_price,  # unit_price
            amount,  # amount
            detail,  # detail
            None,  # unpriced_reason
        ),
    )


@cache
def _zero_amount(currency: str) -> Decimal:
    """`round_money(ZERO, currency)`: zero at the currency's minor unit ("0.00" in USD)."""
    return round_money(ZERO, currency)


def unpriced_charge(
    feature: str, meter: str, quantity: Decimal, currency: str, reason: UnpricedReason, detail: str
) -> Charge:
    """Usage recorded at zero: visible to finance, never billed, re-rated by the next version."""
    quantity = plain(quantity)
    return Charge(
        charge=ChargeType.USAGE,
        status=ChargeStatus.UNPRICED,
        feature=feature,
        meter=meter,
        currency=currency,
        quantity=quantity,
        included_quantity=ZERO,
        billable_quantity=ZERO,
        pricing_model=PricingModel.NONE.value,
        unit_price=None,
        amount=ZERO,
        detail=detail,
        unpriced_reason=reason,
    )


class Rating(NamedTuple):
    """What a running total is worth under a customer's snapshot (a NamedTuple: one per record).

    `charges`: one per metered feature on the meter (or one unpriced charge named after the meter).
    `rejection`: set when the record must also go to the DLQ (reason code + message).
    """

    charges: tuple[Charge, ...]
    rejection: InvalidInput | None = None


class _MeterRates(NamedTuple):
    """How one snapshot prices one meter, prepared once per (snapshot object, meter)."""

    snapshot: EntitlementSnapshot  # kept, so its id() (the memo key) stays its own
    features: tuple[FeatureEntitlement, ...]  # the metered features on the meter
    #: each feature prepared, in order; None when one's pricing cannot be applied (each record
    #: then goes through the general loop, which reports it)
    rated: tuple[_RatedFeature, ...] | None


#: (id(snapshot), meter) -> how the snapshot prices the meter (bounded memo; snapshots are frozen)
_METER_RATES: dict[tuple[int, str], _MeterRates] = {}


def _meter_rates(snapshot: EntitlementSnapshot, meter: str) -> _MeterRates:
    memo_key = (id(snapshot), meter)
    rates = _METER_RATES.get(memo_key)
    if rates is not None and rates.snapshot is snapshot:
        return rates
    minor_units(snapshot.currency)  # raises on a bad code (not memoised: every record is refused)
    features = snapshot.metered(meter)
    try:
        rated: tuple[_RatedFeature, ...] | None = tuple(_rated_feature(feature) for feature in features)
    except (PricingError, ArithmeticError):
        rated = None  # the general loop in rate_usage meets it again, where the rules report it
    rates = _MeterRates(snapshot, features, rated)
    if len(_METER_RATES) >= 262144:
        _METER_RATES.clear()
    _METER_RATES[memo_key] = rates
    return rates


def _check_total(quantity: Decimal) -> None:
    if quantity < 0 or not quantity.is_finite():
        raise InvalidInput(
            f"value: expected a finite running total >= 0, got {quantity}",
            reason="invalid_value",
            field="value",
        )


class UsageFigures(NamedTuple):
    """The figures of one usage charge `rate_usage` rates (status rated, charge usage), bare: what
    the fold's common case builds its line from, without a Charge in between."""

    feature: str
    included_quantity: Decimal
    pricing_model: str
    billable_quantity: Decimal  # this and the rest: `_priced`
    unit_price: Decimal | None
    amount: Decimal
    detail: str


def usage_figures(
    meter: str, quantity: Decimal, snapshot: EntitlementSnapshot
) -> tuple[Decimal, tuple[UsageFigures, ...]] | None:
    """(the total in plain form, each usage charge's figures) when `rate_usage` would rate every
    metered feature on the meter with the customer's pricing and reject nothing; None when it would
    do anything else (no subscription, no feature on the meter, a pricing that cannot be applied):
    the caller asks `rate_usage` then. Raises what `rate_usage` raises (a bad total or currency)."""
    if quantity < ZERO or not quantity.is_finite():
        _check_total(quantity)  # raises
    if snapshot.subscription_id is None:
        return None
    rates = _METER_RATES.get((id(snapshot), meter))
    if rates is None or rates.snapshot is not snapshot:
        rates = _meter_rates(snapshot, meter)  # raises on a bad currency code
    rated = rates.rated
    if not rated:
        return None
    normal = plain(quantity)
    currency = snapshot.currency
    try:
        figures = [
            _new(UsageFigures, (f.name, f.included, f.pricing_model, *_priced(f, normal, currency)))
            for f in rated
        ]
    except PricingError:
        return None  # rate_usage reports it (an unpriced charge and a rejection)
    return normal, tuple(figures)


def rate_usage(meter: str, quantity: Decimal, snapshot: EntitlementSnapshot | None) -> Rating:
    """Price the running total of `meter` with the customer's resolved snapshot.

    - no snapshot: one unpriced charge (`unknown_plan`) and a rejection for the DLQ;
    - a snapshot without subscription: unpriced (`no_subscription`), no rejection;
    - a meter no metered feature uses: unpriced (`meter_not_in_plan`), no rejection;
    - a feature whose pricing cannot be applied: unpriced (`invalid_pricing`) and a rejection.
    """
    _check_total(quantity)
    if snapshot is None:
        message = f"no entitlement snapshot for the customer: {meter} usage recorded unpriced"
        return Rating(
            (unpriced_charge(meter, meter, quantity, "USD", UnpricedReason.UNKNOWN_PLAN, message),),
            InvalidInput(message, reason=UnpricedReason.UNKNOWN_PLAN.value, field="customer_id"),
        )
    rates = _meter_rates(snapshot, meter)  # raises on a bad currency code
    currency = snapshot.currency
    if snapshot.subscription_id is None:
        return Rating(
            (
                unpriced_charge(
                    meter, meter, quantity, currency, UnpricedReason.NO_SUBSCRIPTION, "no subscription"
                ),
            )
        )
    features = rates.features
    if not features:
        detail = f"plan {snapshot.plan_key} v{snapshot.plan_version} has no metered feature on {meter}"
        return Rating(
            (unpriced_charge(meter, meter, quantity, currency, UnpricedReason.METER_NOT_IN_PLAN, detail),)
        )
    normal = plain(quantity)
    rated = rates.rated
    if rated is not None:  # every feature's pricing applies: the common case
        try:
            return _new(Rating, (tuple([_rate(r, normal, currency) for r in rated]), None))  # type: ignore[no-any-return]
        except PricingError:
            pass  # the loop below reports it, feature by feature
    charges: list[Charge] = []
    rejection: InvalidInput | None = None
    for feature in features:
        try:
            charges.append(_rate(_rated_feature(feature), normal, currency))
        except PricingError as exc:
            charges.append(
                unpriced_charge(
                    feature.feature, meter, quantity, currency, UnpricedReason.INVALID_PRICING, exc.message
                )
            )
            rejection = rejection or exc
    return Rating(tuple(charges), rejection)


def base_fee_charge(snapshot: EntitlementSnapshot) -> Charge | None:
    """The period's base fee of a subscription (None when there is no subscription or no fee)."""
    if snapshot.subscription_id is None or snapshot.base_fee == 0:
        return None
    if snapshot.base_fee < 0:
        raise PricingError(f"base_fee: expected >= 0, got {snapshot.base_fee}", field="base_fee")
    amount = round_money(snapshot.base_fee, snapshot.currency)
    return Charge(
        charge=ChargeType.BASE_FEE,
        status=ChargeStatus.RATED,
        feature="base_fee",
        meter=None,
        currency=snapshot.currency,
        quantity=ONE,
        included_quantity=ZERO,
        billable_quantity=ONE,
        pricing_model="flat",
        unit_price=plain(snapshot.base_fee),
        amount=amount,
        detail=f"base fee of plan {snapshot.plan_key} v{snapshot.plan_version}",
    )


def line_key(
    customer_id: str,
    subscription_id: str,
    feature: str,
    period_start: datetime | str,
    charge: ChargeType,
    *,
    since: str | None = None,
) -> str:
    """Identity of a line item: (customer, subscription, feature, period, charge), and for the usage
    of a terms segment that starts after the period start, that start (`since`, UTC ISO).

    `period_start` as a datetime, or already as its UTC ISO text (what `aggregate_key` uses).
    """
    period = period_start if isinstance(period_start, str) else period_start.astimezone(UTC).isoformat()
    # a StrEnum formats as its value; each id escaped (`key_part`) so the key is unambiguous
    key = f"{key_part(customer_id)}|{key_part(subscription_id)}|{key_part(feature)}|{period}|{charge}"
    return key if since is None else f"{key}|{since}"
