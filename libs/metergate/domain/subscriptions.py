"""Subscriptions as dated versions: changes, terms in force, proration (pure: no I/O, no clock).

A subscription is a history of **versions**, each in force over a half-open interval
`[effective_from, effective_to)`; the last one may be open (`effective_to = None`). Versions are
contiguous: each starts where the one before it ends. Every change is a function from a history, a
change and `now` (injected, never read here) to a new history:

- `create`, `change_plan` (another plan, or another version of the same plan: upgrade, downgrade,
  migration), `set_add_on` (add, resize, remove with quantity 0), `set_variables` (negotiated
  values of a custom plan), `set_overrides` (price overrides), `cancel`, `unschedule` (drop what
  takes effect after now);
- each takes effect `IMMEDIATELY` (at `now`), at `PERIOD_END` (the end of the billing period that
  contains `now`), or at a given moment that is not in the past;
- the past is never rewritten: a change takes effect at or after `now` and at or after the start of
  the newest version. A change at the very moment the newest (scheduled) version starts amends it;
  an immediate change while a later change is scheduled is refused (`unschedule` first);
- a cancelled history (closed end) accepts changes only before its end; they keep the end;
- anchor, reset period and currency are the subscription's: a plan change keeps them.

Terms in force at a moment (`terms_at`, `snapshot_at`) are the pinned plan version's features,
then the negotiated values, then the add-ons (times their quantity), then the price overrides. A
plan version is never edited: publishing version 2 changes nothing for a subscription pinned to
version 1 (grandfathering) until it is migrated (`change_plan` to version 2).

Billing (`bill_period` from the history, `fees_of_snapshots` from the dated snapshots a topic reader
sees), the rule the core's README states in "Subscriptions and proration":

- Every period in which a version is in force bills its base fee (and each add-on's fee), with or
  without usage, **prorated by time in force**: fee x (milliseconds in force inside the period /
  milliseconds of the period), actual length of each period (a 30-day month counts 30 days, a
  31-day month 31; an upgrade taking effect at 00:00 UTC on the 15th of a 30-day month leaves 14/30
  to the old plan and 16/30 to the new one), multiplied before dividing. Each segment's fee is a
  line, rounded once, half-up.
- Usage is priced by the terms in force at each event's time: the period is cut into segments at
  the version boundaries, each segment's usage (event quantities summed per meter) is priced by
  its own plan's pricing model.
- **Included units follow the base fee**: a segment's allowance is the plan's `included` x the same
  fraction, rounded half-up to the precision the plan gives it in (whole units for whole numbers).
  Tier bounds are not prorated: each segment's billable units start at its first tier.
- **Limits are not prorated**: a limit is access, not money. The limit in force applies to the
  usage of the whole period so far: after an upgrade the usage before it counts against the new,
  higher limit; after a downgrade below the usage so far a hard limit blocks at once.
- Usage at a moment when no version is in force (before the start, after a cancellation) is not
  priced: it is returned as `unbilled`, never dropped silently.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal
from fractions import Fraction
from itertools import pairwise
from typing import Any, NamedTuple

# a plan version and its add-ons are catalog terms; they are re-exported here, where they are used
from metergate.domain.catalog import METERED_VARIABLES as METERED_VARIABLES
from metergate.domain.catalog import AddOn as AddOn
from metergate.domain.catalog import PlanVersion as PlanVersion
from metergate.domain.catalog import PublishedPlan
from metergate.domain.periods import Period, period_for
from metergate.domain.pricing import (
    Charge,
    ChargeStatus,
    ChargeType,
    PricingError,
    minor_units,
    plain,
    rate_feature,
    round_money,
    validate_pricing,
)
from metergate.domain.records import (
    QUANTITY_SCALE,
    AddOnFee,
    Enforcement,
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    Pricing,
    ResetPeriod,
    utc_millis,
)
from metergate.domain.usage import check_identifier
from metergate.errors import SubscriptionError

ZERO = Decimal(0)
_QUANTITY_STEP = Decimal(1).scaleb(-QUANTITY_SCALE)  # a line's quantity: the share to 9 decimals
_EXACT = Context(prec=100, rounding=ROUND_HALF_UP)


class When(enum.StrEnum):
    IMMEDIATELY = "immediately"
    PERIOD_END = "period_end"


@dataclass(frozen=True)
class PriceOverrides:
    """Prices agreed for one subscription, without a new plan: the base fee, a metered feature's
    pricing as a whole, an add-on's fee per unit."""

    base_fee: Decimal | None = None
    pricing: Mapping[str, Pricing] = field(default_factory=dict)
    add_on_fees: Mapping[str, Decimal] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "base_fee": None if self.base_fee is None else str(self.base_fee),
            "pricing": {k: v.model_dump(mode="json") for k, v in sorted(self.pricing.items())},
            "add_on_fees": {k: str(v) for k, v in sorted(self.add_on_fees.items())},
        }


@dataclass(frozen=True)
class SubscriptionVersion:
    subscription_id: str
    customer_id: str
    number: int  # 1, 2, ... in the order versions were made
    plan: PublishedPlan
    effective_from: datetime
    effective_to: datetime | None  # None: open
    anchor: datetime
    reset_period: ResetPeriod
    add_ons: Mapping[str, int] = field(default_factory=dict)  # add-on key -> quantity (> 0)
    variables: Mapping[str, Decimal | str] = field(default_factory=dict)
    overrides: PriceOverrides = PriceOverrides()
    change: str = "create"  # what made this version

    def in_force(self, moment: datetime) -> bool:
        return self.effective_from <= moment and (self.effective_to is None or moment < self.effective_to)

    def as_dict(self) -> dict[str, Any]:
        """The version as plain JSON-able data (audit before/after, the CLI's `show`)."""
        return {
            "subscription_id": self.subscription_id,
            "customer_id": self.customer_id,
            "number": self.number,
            "plan": self.plan.plan,
            "plan_version": self.plan.version,
            "effective_from": self.effective_from.isoformat(),
            "effective_to": None if self.effective_to is None else self.effective_to.isoformat(),
            "anchor": self.anchor.isoformat(),
            "reset_period": self.reset_period.value,
            "add_ons": dict(sorted(self.add_ons.items())),
            "variables": {k: str(v) for k, v in sorted(self.variables.items())},
            "overrides": self.overrides.as_dict(),
            "change": self.change,
        }


@dataclass(frozen=True)
class History:
    versions: tuple[SubscriptionVersion, ...]

    @property
    def subscription_id(self) -> str:
        return self.versions[0].subscription_id

    @property
    def latest(self) -> SubscriptionVersion:
        return self.versions[-1]

    @property
    def end(self) -> datetime | None:
        """When the subscription ends (a cancellation), or None while it is open."""
        return self.versions[-1].effective_to

    def in_force(self, moment: datetime) -> SubscriptionVersion | None:
        moment = utc_millis(moment)
        for version in reversed(self.versions):
            if version.in_force(moment):
                return version
        return None

    def period_at(self, moment: datetime) -> Period:
        first = self.versions[0]
        return period_for(moment, first.anchor, first.reset_period)


# ---------------------------------------------------------------------------------------------
# validation


def _fail(field_name: str, message: str) -> SubscriptionError:
    return SubscriptionError(f"{field_name}: {message}", field=field_name)


def _moment(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise _fail(name, f"expected a timezone-aware moment such as 2026-11-15T00:00:00Z, got {value}")
    return utc_millis(value)


def check_id(name: str, value: object) -> str:
    """An id by the project's one id rule (`metergate.domain.usage.check_identifier`: 1-256
    characters, no control or invisible character), and not only spaces."""
    rejection = check_identifier(name, value)
    if rejection is not None:
        raise SubscriptionError(rejection.message, field=name)
    assert isinstance(value, str)
    if not value.strip():
        raise _fail(name, f"expected an id of 1-256 characters, got {value!r}")
    return value


def _check_add_ons(plan: PublishedPlan, add_ons: Mapping[str, int]) -> dict[str, int]:
    checked: dict[str, int] = {}
    for key, quantity in add_ons.items():
        name = f"add_ons.{key}"
        allowed = plan.add_ons.get(key)
        if allowed is None:
            known = ", ".join(sorted(plan.add_ons)) or "none"
            raise _fail(name, f"{plan.label} does not allow this add-on (allowed: {known})")
        if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 0:
            raise _fail(name, f"expected a whole quantity >= 0, got {quantity!r}")
        if allowed.max_quantity is not None and quantity > allowed.max_quantity:
            raise _fail(name, f"expected at most {allowed.max_quantity}, got {quantity}")
        if allowed.currency != plan.terms.currency:
            raise _fail(
                name, f"the add-on is priced in {allowed.currency}, {plan.label} in {plan.terms.currency}"
            )
        if quantity:
            checked[key] = quantity
    return checked


def _check_variables(plan: PublishedPlan, values: Mapping[str, Decimal | str]) -> dict[str, Decimal | str]:
    checked: dict[str, Decimal | str] = {}
    for path, value in values.items():
        name = f"variables.{path}"
        if path not in plan.variable:
            negotiable = ", ".join(sorted(plan.variable)) or "none"
            raise _fail(name, f"not negotiable on {plan.label} (negotiable: {negotiable})")
        feature = path.split(".", 1)[0]
        definition = plan.terms.features[feature]
        if definition.kind is FeatureKind.CONFIG:
            if isinstance(value, Decimal):
                value = str(plain(value))
            elif isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str) or not value.strip():
                raise _fail(name, f"expected a value for config feature {feature}, got {value!r}")
            checked[path] = value
            continue
        number = _quantity(value, name)
        checked[path] = number
    missing = sorted(plan.variable - set(checked))
    if missing:
        raise _fail(
            f"variables.{missing[0]}",
            f"{plan.label} marks it negotiated: give the contract's value (missing: {', '.join(missing)})",
        )
    return checked


def _quantity(value: Decimal | str | int, name: str) -> Decimal:
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except ArithmeticError:
        raise _fail(name, f'expected a number >= 0 such as 5000000 or "2.5", got {value!r}') from None
    if not number.is_finite() or number < 0:
        raise _fail(name, f'expected a number >= 0 such as 5000000 or "2.5", got {value!r}')
    if number != number.quantize(Decimal(1).scaleb(-QUANTITY_SCALE), context=_EXACT):
        raise _fail(name, f"expected at most {QUANTITY_SCALE} decimals, got {value}")
    return plain(number)


def _check_overrides(plan: PublishedPlan, overrides: PriceOverrides) -> PriceOverrides:
    if overrides.base_fee is not None:
        _money(overrides.base_fee, "overrides.base_fee", plan.terms.currency)
    for feature, pricing in overrides.pricing.items():
        name = f"overrides.pricing.{feature}"
        metered = {k for k, f in plan.terms.features.items() if f.kind is FeatureKind.METERED}
        for add_on in plan.add_ons.values():
            metered |= {k for k, f in add_on.features.items() if f.kind is FeatureKind.METERED}
        if feature not in metered:
            raise _fail(name, f"expected a metered feature of {plan.label} ({', '.join(sorted(metered))})")
        try:
            validate_pricing(pricing, where=name)
        except PricingError as exc:
            raise SubscriptionError(exc.message, field=exc.field) from None
    for key, fee in overrides.add_on_fees.items():
        name = f"overrides.add_on_fees.{key}"
        if key not in plan.add_ons:
            raise _fail(name, f"{plan.label} does not allow this add-on ({', '.join(sorted(plan.add_ons))})")
        _money(fee, name, plan.terms.currency)
    return overrides


def _money(amount: Decimal, name: str, currency: str) -> None:
    if not isinstance(amount, Decimal) or not amount.is_finite() or amount < 0:
        raise _fail(name, f'expected an amount >= 0 such as "49.00", got {amount!r}')
    del currency  # prices may have more decimals than the currency: rounding happens at the line


def _resolve(
    version: SubscriptionVersion,
) -> tuple[Decimal, dict[str, Decimal], tuple[FeatureEntitlement, ...]]:
    """(base fee, add-on fee per key (x quantity), features) of a version; raises SubscriptionError."""
    plan = version.plan
    features: dict[str, FeatureEntitlement] = dict(plan.terms.features)
    for path, value in version.variables.items():
        feature, _, attribute = path.partition(".")
        current = features[feature]
        if current.kind is FeatureKind.CONFIG:
            features[feature] = current.model_copy(update={"config_value": str(value)})
        else:
            features[feature] = current.model_copy(update={attribute: value})
    fees: dict[str, Decimal] = {}
    for key, quantity in sorted(version.add_ons.items()):
        add_on = plan.add_ons[key]
        unit_fee = version.overrides.add_on_fees.get(key, add_on.fee)
        fees[key] = _EXACT.multiply(unit_fee, Decimal(quantity))
        for name, extra in add_on.features.items():
            features[name] = _add_feature(features.get(name), extra, quantity)
    for name, pricing in version.overrides.pricing.items():
        if name in features:
            features[name] = features[name].model_copy(update={"pricing": pricing})
    for name, entitlement in features.items():
        if entitlement.limit is not None and entitlement.included > entitlement.limit:
            raise _fail(
                f"variables.{name}.included",
                f"expected at most the limit ({plain(entitlement.limit)}), got {plain(entitlement.included)}",
            )
        if entitlement.enforcement is Enforcement.HARD and entitlement.limit is None:
            raise _fail(f"variables.{name}.limit", "hard enforcement needs a limit")
    base_fee = plan.terms.base_fee if version.overrides.base_fee is None else version.overrides.base_fee
    checked = tuple(FeatureEntitlement.model_validate(features[n].model_dump()) for n in sorted(features))
    return base_fee, fees, checked


def _add_feature(
    current: FeatureEntitlement | None, extra: FeatureEntitlement, quantity: int
) -> FeatureEntitlement:
    if extra.kind is FeatureKind.BOOLEAN:
        return (
            extra
            if current is None
            else current.model_copy(update={"enabled": extra.enabled or current.enabled})
        )
    if extra.kind is FeatureKind.CONFIG:
        return extra
    count = Decimal(quantity)
    more_included = _EXACT.multiply(extra.included, count)
    more_limit = None if extra.limit is None else _EXACT.multiply(extra.limit, count)
    if current is None:
        return extra.model_copy(update={"included": plain(more_included), "limit": more_limit})
    limit = current.limit
    if limit is not None and more_limit is not None:
        limit = plain(_EXACT.add(limit, more_limit))
    return current.model_copy(
        update={"included": plain(_EXACT.add(current.included, more_included)), "limit": limit}
    )


def _checked(version: SubscriptionVersion) -> SubscriptionVersion:
    _resolve(version)
    return version


# ---------------------------------------------------------------------------------------------
# changes


def create(
    *,
    subscription_id: str,
    customer_id: str,
    plan: PublishedPlan,
    start: datetime,
    now: datetime,
    anchor: datetime | None = None,
    reset_period: ResetPeriod | None = None,
    add_ons: Mapping[str, int] | None = None,
    variables: Mapping[str, Decimal | str] | None = None,
    overrides: PriceOverrides | None = None,
) -> History:
    """A new subscription in force from `start` (not before `now`), billed from `anchor` (= start)."""
    check_id("subscription_id", subscription_id)
    check_id("customer_id", customer_id)
    start = _moment(start, "start")
    if start < _moment(now, "now"):
        raise _fail(
            "start", f"expected now or later ({utc_millis(now).isoformat()}), got {start.isoformat()}"
        )
    version = SubscriptionVersion(
        subscription_id=subscription_id,
        customer_id=customer_id,
        number=1,
        plan=plan,
        effective_from=start,
        effective_to=None,
        anchor=start if anchor is None else _moment(anchor, "anchor"),
        reset_period=reset_period or plan.terms.reset_period,
        add_ons=_check_add_ons(plan, add_ons or {}),
        variables=_check_variables(plan, variables or {}),
        overrides=_check_overrides(plan, overrides or PriceOverrides()),
        change="create",
    )
    return History((_checked(version),))


def effective_moment(history: History, at: When | datetime, now: datetime) -> datetime:
    """The moment a change given `at` takes effect; refuses the past."""
    now = _moment(now, "now")
    if at is When.IMMEDIATELY:
        return now
    if at is When.PERIOD_END:
        return history.period_at(max(now, history.versions[0].effective_from)).end
    if not isinstance(at, datetime):
        raise _fail("at", f"expected immediately, period_end or a moment, got {at!r}")
    moment = _moment(at, "at")
    if moment < now:
        raise _fail(
            "at",
            f"expected now or later ({now.isoformat()}), got {moment.isoformat()}: the past is not rewritten",
        )
    return moment


def _apply(history: History, at: When | datetime, now: datetime, change: str, **updates: Any) -> History:
    moment = effective_moment(history, at, now)
    latest = history.latest
    end = history.end
    if end is not None and moment >= end:
        raise _fail("at", f"the subscription ends at {end.isoformat()}; a change must take effect before it")
    if moment < latest.effective_from:
        raise _fail(
            "at",
            f"a change is scheduled at {latest.effective_from.isoformat()} ({latest.change}); "
            "unschedule it (`subscriptions unschedule`) before changing the terms earlier",
        )
    if moment == latest.effective_from:  # amend the newest version (a scheduled change, or one made now)
        amended = _checked(replace(latest, change=f"{latest.change}+{change}", **updates))
        return History((*history.versions[:-1], amended))
    closed = replace(latest, effective_to=moment)
    following = _checked(
        replace(
            latest,
            number=latest.number + 1,
            effective_from=moment,
            effective_to=end,
            change=change,
            **updates,
        )
    )
    return History((*history.versions[:-1], closed, following))


def change_plan(
    history: History,
    plan: PublishedPlan,
    *,
    at: When | datetime,
    now: datetime,
    variables: Mapping[str, Decimal | str] | None = None,
    overrides: PriceOverrides | None = None,
) -> History:
    """Move to another plan or another version of the same one (upgrade, downgrade, migration).

    The anchor, reset period and currency stay the subscription's. Add-ons carry over (the new version must
    allow them). On the same plan negotiated values still negotiable and the price overrides carry
    over unless given; on another plan only what the change gives applies.
    """
    latest = history.latest
    if plan.terms.currency != latest.plan.terms.currency:
        raise _fail(
            "plan",
            f"{plan.label} is priced in {plan.terms.currency}, the subscription in "
            f"{latest.plan.terms.currency}: a subscription keeps its currency (start a new one)",
        )
    same_plan = plan.plan == latest.plan.plan
    if variables is None:
        carried = {k: v for k, v in latest.variables.items() if same_plan and k in plan.variable}
    else:
        carried = dict(variables)
    if overrides is None:
        overrides = latest.overrides if same_plan else PriceOverrides()
    return _apply(
        history,
        at,
        now,
        "change_plan",
        plan=plan,
        add_ons=_check_add_ons(plan, latest.add_ons),
        variables=_check_variables(plan, carried),
        overrides=_check_overrides(plan, overrides),
    )


def set_add_on(history: History, key: str, quantity: int, *, at: When | datetime, now: datetime) -> History:
    """Add, resize or (quantity 0) remove an add-on."""
    latest = history.latest
    if quantity == 0 and key not in latest.add_ons:
        raise _fail(f"add_ons.{key}", "not attached to this subscription: nothing to remove")
    add_ons = {**latest.add_ons, key: quantity}
    change = (
        "remove_add_on" if quantity == 0 else ("resize_add_on" if key in latest.add_ons else "add_add_on")
    )
    return _apply(history, at, now, change, add_ons=_check_add_ons(latest.plan, add_ons))


def set_variables(
    history: History, values: Mapping[str, Decimal | str], *, at: When | datetime, now: datetime
) -> History:
    """Change negotiated values (the ones not given keep theirs)."""
    latest = history.latest
    merged = {**latest.variables, **values}
    return _apply(history, at, now, "set_variables", variables=_check_variables(latest.plan, merged))


def set_overrides(
    history: History, overrides: PriceOverrides, *, at: When | datetime, now: datetime
) -> History:
    """Replace the subscription's price overrides as a whole."""
    return _apply(
        history, at, now, "set_overrides", overrides=_check_overrides(history.latest.plan, overrides)
    )


def cancel(history: History, *, at: When | datetime, now: datetime) -> History:
    """End the subscription `at` (immediately or at period end): nothing is in force from then on."""
    moment = effective_moment(history, at, now)
    latest = history.latest
    if history.end is not None and moment >= history.end:
        raise _fail("at", f"the subscription already ends at {history.end.isoformat()}")
    if moment < latest.effective_from:
        raise _fail(
            "at",
            f"a change is scheduled at {latest.effective_from.isoformat()} ({latest.change}); "
            "unschedule it (`subscriptions unschedule`) before cancelling earlier",
        )
    if moment == latest.effective_from:
        if len(history.versions) == 1:
            raise _fail(
                "at", "the subscription has not started yet: it ends before it begins (delete it instead)"
            )
        previous = replace(history.versions[-2], effective_to=moment)
        return History((*history.versions[:-2], previous))
    return History((*history.versions[:-1], replace(latest, effective_to=moment)))


def unschedule(history: History, *, now: datetime) -> History:
    """Drop the versions that take effect after `now` (a scheduled change or cancellation)."""
    now = _moment(now, "now")
    kept = tuple(v for v in history.versions if v.effective_from <= now)
    if not kept:
        raise _fail("subscription_id", "the subscription has not started yet: nothing but scheduled terms")
    last = kept[-1]
    if len(kept) == len(history.versions) and (last.effective_to is None or last.effective_to <= now):
        raise _fail("at", "nothing is scheduled after now")
    return History((*kept[:-1], replace(last, effective_to=None)))


# ---------------------------------------------------------------------------------------------
# terms in force, billing


def terms_at(
    history: History, moment: datetime
) -> tuple[SubscriptionVersion, Decimal, dict[str, Decimal], tuple[FeatureEntitlement, ...]] | None:
    """(version, base fee, add-on fees, features) in force at `moment`, or None."""
    version = history.in_force(moment)
    if version is None:
        return None
    return (version, *_resolve(version))


def snapshot_at(
    history: History, moment: datetime, *, version: int, updated_at: datetime
) -> EntitlementSnapshot | None:
    """The resolved entitlement snapshot of the terms in force at `moment` (None when none are).

    Its `base_fee` is the whole period's fee of these terms (plan or override, plus add-ons);
    proration is `bill_period`'s business.
    """
    found = terms_at(history, moment)
    if found is None:
        return None
    sub, base_fee, fees, features = found
    total = base_fee
    for fee in fees.values():
        total = _EXACT.add(total, fee)
    add_on_fees = tuple(
        AddOnFee(
            add_on=key,
            quantity=sub.add_ons[key],
            fee=plain(sub.overrides.add_on_fees.get(key, sub.plan.add_ons[key].fee)),
        )
        for key in sorted(fees)
    )
    return EntitlementSnapshot(
        customer_id=sub.customer_id,
        subscription_id=sub.subscription_id,
        plan_key=sub.plan.plan,
        plan_version=sub.plan.version,
        currency=sub.plan.terms.currency,
        billing_anchor=sub.anchor,
        reset_period=sub.reset_period,
        base_fee=plain(total),
        features=features,
        version=version,
        updated_at=utc_millis(updated_at),
        add_on_fees=add_on_fees,
    )


class Usage(NamedTuple):
    timestamp: datetime
    meter: str
    quantity: Decimal


class Segment(NamedTuple):
    version: SubscriptionVersion
    start: datetime
    end: datetime
    in_force_ms: int  # milliseconds in force inside the period
    period_ms: int  # milliseconds of the period

    @property
    def share(self) -> Fraction:
        return Fraction(self.in_force_ms, self.period_ms)

    @property
    def shown(self) -> str:
        return _shown_share(self.in_force_ms, self.period_ms)


class Stretch(NamedTuple):
    """A part of a period with one dated snapshot in force (`fees_of_snapshots`)."""

    snapshot: EntitlementSnapshot
    start: datetime
    end: datetime
    in_force_ms: int
    period_ms: int

    @property
    def share(self) -> Fraction:
        return Fraction(self.in_force_ms, self.period_ms)

    @property
    def shown(self) -> str:
        return _shown_share(self.in_force_ms, self.period_ms)


def _shown_share(in_force_ms: int, period_ms: int) -> str:
    """A share as people count it: whole days when both are whole days."""
    day = 86_400_000
    if in_force_ms % day == 0 and period_ms % day == 0:
        return f"{in_force_ms // day}/{period_ms // day} days"
    return f"{in_force_ms}/{period_ms} ms"


class BillLine(NamedTuple):
    segment_start: datetime
    segment_end: datetime
    plan: str
    plan_version: int
    charge: Charge  # pricing.Charge: amount rounded once


@dataclass(frozen=True)
class PeriodBill:
    period: Period
    currency: str
    lines: tuple[BillLine, ...]
    unbilled: tuple[Usage, ...]  # usage when no version was in force

    @property
    def total(self) -> Decimal:
        total = ZERO
        for line in self.lines:
            total = _EXACT.add(total, line.charge.amount)
        return total


def segments(history: History, period: Period) -> list[Segment]:
    """The versions in force inside `period`, clipped to it, with their share of its length."""
    length = _millis(period.end - period.start)
    found: list[Segment] = []
    for version in history.versions:
        start = max(version.effective_from, period.start)
        end = period.end if version.effective_to is None else min(version.effective_to, period.end)
        if start < end:
            found.append(Segment(version, start, end, _millis(end - start), length))
    return found


_MS = timedelta(milliseconds=1)


def _millis(delta: timedelta) -> int:
    return delta // _MS


def prorate(amount: Decimal, share: Fraction) -> Decimal:
    """`amount` x `share`, multiplied before dividing (exact whenever the result has a finite
    decimal form; otherwise to 100 digits), rounded where it becomes a line, not here."""
    return _EXACT.divide(_EXACT.multiply(amount, Decimal(share.numerator)), Decimal(share.denominator))


def prorated_included(included: Decimal, share: Fraction) -> Decimal:
    """The allowance of a segment: included x fraction, rounded half-up to the precision of `included`."""
    exponent = included.as_tuple().exponent
    places = Decimal(1).scaleb(min(0, exponent if isinstance(exponent, int) else 0))
    return plain(prorate(included, share).quantize(places, rounding=ROUND_HALF_UP, context=_EXACT))


def bill_period(history: History, moment: datetime, usage: Iterable[Usage] = ()) -> PeriodBill:
    """The bill of the billing period containing `moment`: base and add-on fees prorated by time in
    force, usage (summed per meter) priced by the terms in force at each event's time."""
    period = history.period_at(moment)
    parts = segments(history, period)
    currency = history.versions[0].plan.terms.currency
    sums: list[dict[str, Decimal]] = [{} for _ in parts]
    unbilled: list[Usage] = []
    for event in usage:
        at = utc_millis(event.timestamp)
        if at not in period:
            raise _fail(
                "usage.timestamp",
                f"{at.isoformat()} is outside the period [{period.start.isoformat()}, {period.end.isoformat()})",
            )
        index = next((i for i, s in enumerate(parts) if s.start <= at < s.end), None)
        if index is None:
            unbilled.append(event)
            continue
        sums[index][event.meter] = _EXACT.add(sums[index].get(event.meter, ZERO), event.quantity)
    lines: list[BillLine] = []
    for part, totals in zip(parts, sums, strict=True):
        version = part.version
        base_fee, fees, features = _resolve(version)
        cur = version.plan.terms.currency
        minor_units(cur)

        def line(charge: Charge, part: Segment = part) -> BillLine:
            return BillLine(part.start, part.end, part.version.plan.plan, part.version.plan.version, charge)

        share = part.shown
        if base_fee:
            lines.append(
                line(
                    _fee_charge(
                        "base_fee",
                        base_fee,
                        part,
                        cur,
                        f"base fee of {version.plan.label} for {share}",
                    )
                )
            )
        for key, fee in fees.items():
            if fee:
                lines.append(
                    line(
                        _fee_charge(
                            f"add_on:{key}",
                            fee,
                            part,
                            cur,
                            f"add-on {key} x{version.add_ons[key]} for {share}",
                        )
                    )
                )
        for feature in features:
            if feature.kind is not FeatureKind.METERED or feature.meter not in totals:
                continue
            allowance = prorated_included(feature.included, part.share)
            charge = rate_feature(
                feature.model_copy(update={"included": allowance}), totals[feature.meter], cur
            )
            lines.append(line(charge))
    return PeriodBill(period, currency, tuple(lines), tuple(unbilled))


def _fee_charge(feature: str, fee: Decimal, part: Segment | Stretch, currency: str, detail: str) -> Charge:
    amount = prorate(fee, part.share)
    shown = prorate(Decimal(1), part.share).quantize(_QUANTITY_STEP, rounding=ROUND_HALF_UP, context=_EXACT)
    return Charge(
        charge=ChargeType.BASE_FEE,
        status=ChargeStatus.RATED,
        feature=feature,
        meter=None,
        currency=currency,
        quantity=plain(shown),
        included_quantity=ZERO,
        billable_quantity=plain(shown),
        pricing_model="prorated_flat",
        unit_price=plain(fee),
        amount=round_money(amount, currency),
        detail=detail,
    )


# ---------------------------------------------------------------------------------------------
# dated snapshots: what a reader of entitlements.snapshots (rating, metering, the check) applies


def _covers(snapshot: EntitlementSnapshot, moment: datetime) -> bool:
    return (snapshot.valid_from is None or snapshot.valid_from <= moment) and (
        snapshot.valid_to is None or moment < snapshot.valid_to
    )


def snapshot_in_force(
    snapshots: Iterable[EntitlementSnapshot], moment: datetime
) -> EntitlementSnapshot | None:
    """Of one customer's dated snapshots, the terms in force at `moment`: the highest version among
    those whose `[valid_from, valid_to)` contains it (None bounds are open). A snapshot without
    subscription is in force too (it means: nothing subscribed then)."""
    moment = utc_millis(moment)
    found = None
    for snapshot in snapshots:
        if _covers(snapshot, moment) and (found is None or snapshot.version > found.version):
            found = snapshot
    return found


def stretches(snapshots: Iterable[EntitlementSnapshot], period: Period) -> list[Stretch]:
    """The parts of `period` with one subscribed snapshot in force, in order: the period is cut
    where the terms in force change (`snapshot_in_force` of one customer's dated snapshots)."""
    dated = list(snapshots)
    cuts = {period.start, period.end}
    for snapshot in dated:
        for bound in (snapshot.valid_from, snapshot.valid_to):
            if bound is not None and period.start < bound < period.end:
                cuts.add(bound)
    edges = sorted(cuts)
    found: list[tuple[datetime, datetime, EntitlementSnapshot]] = []
    for start, end in pairwise(edges):
        current = snapshot_in_force(dated, start)
        if current is None or current.subscription_id is None:
            continue
        if found and found[-1][2] is current and found[-1][1] == start:
            found[-1] = (found[-1][0], end, current)
        else:
            found.append((start, end, current))
    length = _millis(period.end - period.start)
    return [Stretch(snapshot, start, end, _millis(end - start), length) for start, end, snapshot in found]


def share_in_force(
    snapshots: Iterable[EntitlementSnapshot], snapshot: EntitlementSnapshot, period: Period
) -> Fraction:
    """The share of `period` in which `snapshot` is the terms in force among one customer's
    snapshots (`stretches`): what its base fee and its included units are multiplied by."""
    in_force = sum(
        part.in_force_ms for part in stretches(snapshots, period) if part.snapshot.version == snapshot.version
    )
    return Fraction(in_force, _millis(period.end - period.start))


class FeeLine(NamedTuple):
    """A fee line of a period from dated snapshots: the stretch it covers and its charge."""

    stretch: Stretch
    charge: Charge


def fee_lines_of_snapshots(snapshots: Iterable[EntitlementSnapshot], period: Period) -> list[FeeLine]:
    """The base-fee and add-on fee lines of `period` from one customer's dated snapshots.

    The period is cut where the terms in force change (`stretches`); each stretch with a
    subscription bills its snapshot's fees x its share of the period, multiplied before dividing,
    rounded once per line: the plan's base fee (`base_fee` less its add-ons) as `base_fee`, each
    add-on (`add_on_fees`: fee per unit x quantity) as `add_on:<key>`, as `bill_period` does from
    the history. Zero fees make no line. Adjacent stretches of one snapshot are one stretch.
    """
    lines: list[FeeLine] = []
    for part in stretches(snapshots, period):
        snapshot = part.snapshot
        label = f"{snapshot.plan_key} v{snapshot.plan_version}"
        plan_fee = snapshot.base_fee
        for add_on in snapshot.add_on_fees:
            plan_fee = _EXACT.subtract(plan_fee, _EXACT.multiply(add_on.fee, Decimal(add_on.quantity)))
        if plan_fee > 0:
            detail = f"base fee of {label} for {part.shown}"
            charge = _fee_charge("base_fee", plain(plan_fee), part, snapshot.currency, detail)
            lines.append(FeeLine(part, charge))
        for add_on in snapshot.add_on_fees:
            fee = _EXACT.multiply(add_on.fee, Decimal(add_on.quantity))
            if fee > 0:
                detail = f"add-on {add_on.add_on} x{add_on.quantity} for {part.shown}"
                charge = _fee_charge(f"add_on:{add_on.add_on}", plain(fee), part, snapshot.currency, detail)
                lines.append(FeeLine(part, charge))
    return lines


def fees_of_snapshots(snapshots: Iterable[EntitlementSnapshot], period: Period) -> list[Charge]:
    """The charges of `fee_lines_of_snapshots` (what `bill_period` gives from the history, for
    readers that only see the topic)."""
    return [line.charge for line in fee_lines_of_snapshots(snapshots, period)]
