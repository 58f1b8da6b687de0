"""The entitlement decision: may customer C use N more units of feature F now? (pure: no I/O).

`check(snapshot, feature, now=..., usage=...)` answers from what the caller knows: the customer's
`EntitlementSnapshot` (what the plan allows), the usage of the feature's meter in the period that
contains `now`, and optionally the customer's credit balance. Rules:

| case | has_access | reason |
| --- | --- | --- |
| no snapshot for the customer | no | `no_subscription` |
| the feature is not in the snapshot | no | `unknown_feature` |
| the feature is disabled | no | `disabled` |
| boolean or config feature | yes (config features carry `config_value`) | `ok` |
| metered, no limit | yes | `ok` |
| metered, hard limit, `usage + requested_units <= limit` | yes | `ok` |
| metered, hard limit, `usage >= limit` and units requested | no | `limit_exceeded` |
| metered, hard limit, `usage < limit < usage + requested_units` | no | `would_exceed` |
| metered, soft limit, `usage + requested_units > limit` | yes | `soft_limit_exceeded` |
| metered, enforcement `none` | yes (the limit is only reported) | `ok` |
| metered and priced beyond `included`, a credit balance known and `<= 0`, the request goes beyond `included`, hard enforcement | no | `credits_exhausted` |

- The hard rule is the seed rule `usage.month_to_date + request_units > entitlement.limit`, with the
  period of the customer's subscription (`metergate.domain.periods`: anchor and reset period, the
  calendar month UTC without one) in place of the month. Usage of an earlier period never counts:
  once a period rolls over, usage starts again from zero.
- `requested_units = 0` asks "does the customer have access at all": it is allowed at the limit
  and denied only past it (a hard limit already exceeded).
- `remaining` = `max(0, limit - usage)` before this request; `overage_units` = the units this
  request leaves beyond the limit (`max(0, usage + requested_units - limit)`), 0 without a limit.
- Everything is Decimal; nothing is rounded.

`as_of`, `stale` and `source` say where the answer comes from (the caller's state: `live` from the
topics, `cache` from a disk checkpoint, `fallback` from configuration for a customer never seen);
the rule itself does not depend on them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from metergate.domain.periods import Period, period_for
from metergate.domain.records import (
    MAX_QUANTITY,
    QUANTITY_PRECISION,
    QUANTITY_SCALE,
    Enforcement,
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    PricingModel,
    check_decimal,
    to_decimal,
)
from metergate.errors import InvalidInput

_ZERO = Decimal(0)
_ONE = Decimal(1)


class Reason(enum.StrEnum):
    OK = "ok"
    NO_SUBSCRIPTION = "no_subscription"
    UNKNOWN_FEATURE = "unknown_feature"
    DISABLED = "disabled"
    LIMIT_EXCEEDED = "limit_exceeded"
    WOULD_EXCEED = "would_exceed"
    CREDITS_EXHAUSTED = "credits_exhausted"
    SOFT_LIMIT_EXCEEDED = "soft_limit_exceeded"


class Source(enum.StrEnum):
    LIVE = "live"  # state built from the topics
    CACHE = "cache"  # state loaded from the disk checkpoint, the broker not reached since
    FALLBACK = "fallback"  # a configured answer for a customer the state has never seen


def shown(value: Decimal | None) -> str:
    """A Decimal as a person writes it: 1000, not 1000.000000000 or 1E+3."""
    return "unlimited" if value is None else f"{value.normalize():f}"


_FIELD_NAMES = (
    "has_access",
    "reason",
    "message",
    "customer_id",
    "feature",
    "kind",
    "enforcement",
    "usage",
    "included",
    "limit",
    "remaining",
    "requested_units",
    "overage_units",
    "config_value",
    "period_start",
    "period_end",
    "as_of",
    "stale",
    "source",
)


class Decision:
    """One answer (treat it as read-only).

    A plain class with `__slots__` rather than a dataclass: it is built once per check, and a check
    must stay within a few microseconds. The explanation of a denial or an overage names figures
    (`shown()` of three Decimals and a date: about as long as the whole rule), so the rule hands
    over its parts and `message` is formatted the first time somebody reads it.
    """

    __slots__ = (*(name for name in _FIELD_NAMES if name != "message"), "_message", "_explain")

    def __init__(
        self,
        has_access: bool,
        reason: Reason,
        message: str | None,
        customer_id: str,
        feature: str,
        kind: FeatureKind | None = None,
        enforcement: Enforcement | None = None,
        usage: Decimal | None = None,
        included: Decimal | None = None,
        limit: Decimal | None = None,
        remaining: Decimal | None = None,
        requested_units: Decimal = _ONE,
        overage_units: Decimal | None = None,
        config_value: str | None = None,
        period_start: datetime | None = None,
        period_end: datetime | None = None,
        as_of: datetime | None = None,
        stale: bool = False,
        source: Source = Source.LIVE,
        explain: Callable[[Decision], str] | None = None,
    ) -> None:
        self.has_access = has_access
        self.reason = reason
        self._message = message
        self._explain = explain
        self.customer_id = customer_id
        self.feature = feature
        self.kind = kind
        self.enforcement = enforcement
        self.usage = usage
        self.included = included
        self.limit = limit
        self.remaining = remaining
        self.requested_units = requested_units
        self.overage_units = overage_units
        self.config_value = config_value
        self.period_start = period_start
        self.period_end = period_end
        self.as_of = as_of
        self.stale = stale
        self.source = source

    @property
    def message(self) -> str:
        message = self._message
        if message is None:
            explain = self._explain
            message = self._message = "" if explain is None else explain(self)
        return message

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _FIELD_NAMES)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Decision:
            return NotImplemented
        return self.values() == other.values()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown_fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELD_NAMES)
        return f"Decision({shown_fields})"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: Decimals as exact strings (never floats), datetimes as ISO 8601, enums as values."""
        out: dict[str, Any] = {}
        for name in _FIELD_NAMES:
            value = getattr(self, name)
            if isinstance(value, Decimal):
                value = f"{value.normalize():f}"  # exact, without trailing zeros: "95", not "95.000000000"
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, enum.Enum):
                value = value.value
            out[name] = value
        return out


#: Decimals of the small whole amounts most checks ask for (Decimals are immutable: safe to share)
_SMALL_COUNT = 1025
_SMALL = tuple(Decimal(i) for i in range(_SMALL_COUNT))

#: usage of (meter, period) as the caller knows it
UsageLookup = Callable[[str, Period], Decimal]


def requested(value: Any, *, name: str = "requested_units") -> Decimal:
    """Validate a requested amount: a non-negative Decimal, int or numeric string (never float)."""
    kind = type(value)
    if kind is int:
        if 0 <= value < _SMALL_COUNT:  # type: ignore[operator]
            return _SMALL[value]  # type: ignore[index]
        if 0 <= value <= MAX_QUANTITY:  # type: ignore[operator]
            return Decimal(value)
    if (
        kind is Decimal
        and value.is_finite()
        and 0 <= value <= MAX_QUANTITY
        and value.as_tuple().exponent >= -QUANTITY_SCALE
    ):  # type: ignore[union-attr,operator]
        return value  # type: ignore[no-any-return]
    try:
        number = to_decimal(value, name=name)
        return check_decimal(
            number, name=name, scale=QUANTITY_SCALE, precision=QUANTITY_PRECISION, allow_negative=False
        )
    except ValueError as exc:
        raise InvalidInput(str(exc), reason="invalid_requested_units", field=name) from None


def find_feature(snapshot: EntitlementSnapshot, feature: str) -> FeatureEntitlement | None:
    for entitlement in snapshot.features:
        if entitlement.feature == feature:
            return entitlement
    return None


def check(
    snapshot: EntitlementSnapshot | None,
    customer_id: str,
    feature: str,
    *,
    now: datetime,
    usage: UsageLookup,
    requested_units: Decimal = _ONE,
    period: Period | None = None,
    credit_balance: Decimal | None = None,
    as_of: datetime | None = None,
    stale: bool = False,
    source: Source = Source.LIVE,
) -> Decision:
    """The decision for one request. `period` may be passed when the caller already knows the period
    of `snapshot` containing `now` (it must be `period_for(now, anchor, reset)`)."""

    def plain(
        has_access: bool,
        reason: Reason,
        message: str,
        kind: FeatureKind | None = None,
        config_value: str | None = None,
    ) -> Decision:
        return Decision(
            has_access,
            reason,
            message,
            customer_id,
            feature,
            kind=kind,
            requested_units=requested_units,
            config_value=config_value,
            as_of=as_of,
            stale=stale,
            source=source,
        )

    if snapshot is None:
        return plain(False, Reason.NO_SUBSCRIPTION, f"no subscription known for customer {customer_id!r}")
    entitlement = find_feature(snapshot, feature)
    if entitlement is None:
        return plain(
            False,
            Reason.UNKNOWN_FEATURE,
            f"plan {snapshot.plan_key!r} of customer {customer_id!r} does not include feature {feature!r}",
        )
    kind = entitlement.kind
    if not entitlement.enabled:
        return plain(
            False, Reason.DISABLED, f"feature {feature!r} is disabled for customer {customer_id!r}", kind=kind
        )
    if kind is not FeatureKind.METERED:
        return plain(True, Reason.OK, "entitled", kind=kind, config_value=entitlement.config_value)
    if period is None:
        period = period_for(now, snapshot.billing_anchor, snapshot.reset_period)
    used = usage(entitlement.meter or feature, period)
    terms = MeteredTerms(entitlement)
    return metered(terms, customer_id, used, requested_units, period, credit_balance, as_of, stale, source)


# enum members as module constants: `Reason.OK` is a class-attribute lookup through the enum's
# metaclass, about 0.1 µs each, several per check
_OK = Reason.OK
_LIMIT_EXCEEDED = Reason.LIMIT_EXCEEDED
_WOULD_EXCEED = Reason.WOULD_EXCEED
_SOFT_LIMIT_EXCEEDED = Reason.SOFT_LIMIT_EXCEEDED
_CREDITS_EXHAUSTED = Reason.CREDITS_EXHAUSTED
_HARD = Enforcement.HARD
_SOFT = Enforcement.SOFT
_METERED = FeatureKind.METERED


def _limit_reached(d: Decision) -> str:
    end = d.period_end.isoformat() if d.period_end is not None else "the end of the period"
    return f"hard limit of {shown(d.limit)} for {d.feature!r} reached (usage {shown(d.usage)}) until {end}"


def _would_exceed(d: Decision) -> str:
    return (
        f"{shown(d.requested_units)} more would exceed the hard limit of {shown(d.limit)} for "
        f"{d.feature!r} (usage {shown(d.usage)}, {shown(d.remaining)} remaining)"
    )


def _soft_exceeded(d: Decision) -> str:
    return f"soft limit of {shown(d.limit)} for {d.feature!r} exceeded by {shown(d.overage_units)} (allowed)"


class _CreditsExhausted:
    """Explains a credits_exhausted denial (the balance is not a Decision field)."""

    __slots__ = ("balance",)

    def __init__(self, balance: Decimal) -> None:
        self.balance = balance

    def __call__(self, d: Decision) -> str:
        return (
            f"credit balance of customer {d.customer_id!r} is {shown(self.balance)}: usage of "
            f"{d.feature!r} beyond the {shown(d.included)} included units needs credit"
        )


class MeteredTerms:
    """What the metered rule reads of a feature, copied out of its `FeatureEntitlement` once (a
    caller that checks often keeps it per snapshot: plain slots read faster than a model's fields)."""

    __slots__ = ("credits_apply", "enforcement", "feature", "included", "limit")

    def __init__(self, entitlement: FeatureEntitlement) -> None:
        self.feature = entitlement.feature
        self.limit = entitlement.limit
        self.enforcement = entitlement.enforcement
        self.included = entitlement.included
        #: a credit balance can deny this feature: hard enforcement and priced beyond `included`
        self.credits_apply = (
            entitlement.enforcement is Enforcement.HARD and entitlement.pricing.model is not PricingModel.NONE
        )


def metered(
    entitlement: MeteredTerms,
    customer_id: str,
    used: Decimal,
    requested_units: Decimal,
    period: Period,
    credit_balance: Decimal | None = None,
    as_of: datetime | None = None,
    stale: bool = False,
    source: Source = Source.LIVE,
) -> Decision:
    """The rule for a metered feature once its usage in `period` is known."""
    limit = entitlement.limit
    enforcement = entitlement.enforcement
    after = used + requested_units
    explain: Callable[[Decision], str] | None = None
    has_access = True
    reason = _OK
    if limit is None:
        remaining = None
        overage = _ZERO
    else:
        if used < limit:
            remaining = limit - used
        else:
            remaining = _ZERO
        if after > limit:
            overage = after - limit
            if enforcement is _HARD:
                has_access = False
                if remaining == _ZERO and (requested_units > _ZERO or used > limit):
                    reason = _LIMIT_EXCEEDED
                    explain = _limit_reached
                else:
                    reason = _WOULD_EXCEED
                    explain = _would_exceed
            elif enforcement is _SOFT:
                reason = _SOFT_LIMIT_EXCEEDED
                explain = _soft_exceeded
        else:
            overage = _ZERO
    if has_access and credit_balance is not None and credit_balance <= _ZERO:
        if entitlement.credits_apply and after > entitlement.included and requested_units > _ZERO:
            has_access = False
            reason = _CREDITS_EXHAUSTED
            explain = _CreditsExhausted(credit_balance)
    return Decision(
        has_access,
        reason,
        "entitled" if explain is None else None,
        customer_id,
        entitlement.feature,
        _METERED,
        enforcement,
        used,
        entitlement.included,
        limit,
        remaining,
        requested_units,
        overage,
        None,
        period.start,
        period.end,
        as_of,
        stale,
        source,
        explain,
    )


def fallback(
    customer_id: str,
    feature: str,
    rules: Mapping[str, bool],
    requested_units: Decimal = _ONE,
    *,
    as_of: datetime | None = None,
    stale: bool = False,
) -> Decision | None:
    """The configured answer for `feature` when the customer was never seen, or None (no rule)."""
    allowed = rules.get(feature)
    if allowed is None:
        allowed = rules.get("*")
    if allowed is None:
        return None
    return Decision(
        allowed,
        Reason.OK if allowed else Reason.NO_SUBSCRIPTION,
        f"customer {customer_id!r} not known here: configured fallback for {feature!r} is {'allow' if allowed else 'deny'}",
        customer_id,
        feature,
        requested_units=requested_units,
        as_of=as_of,
        stale=stale,
        source=Source.FALLBACK,
    )
