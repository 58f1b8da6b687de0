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
from dataclasses import dataclass, fields
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


@dataclass(slots=True)
class Decision:
    """One answer. Not frozen on purpose: a frozen dataclass sets each of its 19 fields through
    `object.__setattr__`, which doubled the cost of a check; treat it as read-only."""

    has_access: bool
    reason: Reason
    message: str
    customer_id: str
    feature: str
    kind: FeatureKind | None = None
    enforcement: Enforcement | None = None
    usage: Decimal | None = None
    included: Decimal | None = None
    limit: Decimal | None = None
    remaining: Decimal | None = None
    requested_units: Decimal = _ONE
    overage_units: Decimal | None = None
    config_value: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    as_of: datetime | None = None
    stale: bool = False
    source: Source = Source.LIVE

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


_FIELD_NAMES = tuple(f.name for f in fields(Decision))

#: usage of (meter, period) as the caller knows it
UsageLookup = Callable[[str, Period], Decimal]


def requested(value: Any, *, name: str = "requested_units") -> Decimal:
    """Validate a requested amount: a non-negative Decimal, int or numeric string (never float)."""
    kind = type(value)
    if kind is int and 0 <= value <= MAX_QUANTITY:  # type: ignore[operator]
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
    return metered(
        entitlement,
        customer_id,
        used,
        requested_units,
        period,
        credit_balance=credit_balance,
        as_of=as_of,
        stale=stale,
        source=source,
    )


def metered(
    entitlement: FeatureEntitlement,
    customer_id: str,
    used: Decimal,
    requested_units: Decimal,
    period: Period,
    *,
    credit_balance: Decimal | None = None,
    as_of: datetime | None = None,
    stale: bool = False,
    source: Source = Source.LIVE,
) -> Decision:
    """The rule for a metered feature once its usage in `period` is known."""
    feature = entitlement.feature
    limit = entitlement.limit
    enforcement = entitlement.enforcement
    after = used + requested_units
    if limit is None:
        remaining = None
        overage = _ZERO
    else:
        remaining = limit - used if used < limit else _ZERO
        overage = after - limit if after > limit else _ZERO
    has_access = True
    reason = Reason.OK
    message = "entitled"
    if limit is not None and overage > 0:
        if enforcement is Enforcement.HARD:
            has_access = False
            if remaining == 0 and (requested_units > 0 or used > limit):
                reason = Reason.LIMIT_EXCEEDED
                message = f"hard limit of {shown(limit)} for {feature!r} reached (usage {shown(used)}) until {period.end.isoformat()}"
            else:
                reason = Reason.WOULD_EXCEED
                message = f"{shown(requested_units)} more would exceed the hard limit of {shown(limit)} for {feature!r} (usage {shown(used)}, {shown(remaining)} remaining)"
        elif enforcement is Enforcement.SOFT:
            reason = Reason.SOFT_LIMIT_EXCEEDED
            message = f"soft limit of {shown(limit)} for {feature!r} exceeded by {shown(overage)} (allowed)"
    if (
        has_access
        and credit_balance is not None
        and credit_balance <= 0
        and enforcement is Enforcement.HARD
        and entitlement.pricing.model is not PricingModel.NONE
        and after > entitlement.included
        and requested_units > 0
    ):
        has_access = False
        reason = Reason.CREDITS_EXHAUSTED
        message = f"credit balance of customer {customer_id!r} is {shown(credit_balance)}: usage of {feature!r} beyond the {shown(entitlement.included)} included units needs credit"
    return Decision(
        has_access,
        reason,
        message,
        customer_id,
        feature,
        kind=FeatureKind.METERED,
        enforcement=enforcement,
        usage=used,
        included=entitlement.included,
        limit=limit,
        remaining=remaining,
        requested_units=requested_units,
        overage_units=overage,
        period_start=period.start,
        period_end=period.end,
        as_of=as_of,
        stale=stale,
        source=source,
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
