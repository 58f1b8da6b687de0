"""Limit evaluation: which limit events a feature's usage calls for (pure).

For a metered feature with usage `u` in the current period:

| kind | when | threshold |
| --- | --- | --- |
| threshold_crossed | a limit > 0 is set and u >= limit * t / 100, for each t in thresholds | t |
| overage_started | usage beyond the included units is priced (pricing model not none), included > 0, and u > included | - |
| limit_reached | a limit is set and u >= limit (and u > 0) | - |
| hard_limit_exceeded | enforcement is hard and u > limit | - |

Soft enforcement only signals; hard enforcement additionally says that usage went past the limit
(enforcement services block before that, using the entitlement check). Each event is due once per
(customer, feature, period, kind, threshold): the caller keeps the `mark`s of those already sent.
The evaluation depends only on the usage figure, never on how it got there, so a replay after a
crash finds the same events due at the same events of the log.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from decimal import Context, Decimal

from metergate.domain.records import Enforcement, FeatureEntitlement, FeatureKind, LimitKind, PricingModel

_ZERO = Decimal(0)
_EXACT = Context(prec=80)  # the default 28 digits would round usage * 100 for large figures


@dataclass(frozen=True, slots=True)
class DueLimit:
    feature: str
    kind: LimitKind
    threshold: int | None
    limit: Decimal | None

    @property
    def mark(self) -> str:
        return mark(self.feature, self.kind, self.threshold)


def mark(feature: str, kind: LimitKind, threshold: int | None) -> str:
    return f"{feature}|{kind.value}|{'' if threshold is None else threshold}"


def watches(feature: FeatureEntitlement) -> bool:
    """Whether the feature can ever call for a limit event (so callers skip the rest cheaply)."""
    if feature.kind is not FeatureKind.METERED or not feature.enabled:
        return False
    overage = feature.pricing.model is not PricingModel.NONE and feature.included > 0
    return feature.limit is not None or overage


def due(feature: FeatureEntitlement, usage: Decimal, emitted: Collection[str]) -> list[DueLimit]:
    """Limit events the usage calls for that are not in `emitted`, in a stable order."""
    if not watches(feature) or usage <= _ZERO:
        return []
    name = feature.feature
    limit = feature.limit
    found: list[DueLimit] = []
    if limit is not None and limit > 0:
        for threshold in sorted(set(feature.thresholds)):
            if _EXACT.multiply(usage, 100) >= _EXACT.multiply(limit, threshold):
                found.append(DueLimit(name, LimitKind.THRESHOLD_CROSSED, threshold, limit))
    if feature.pricing.model is not PricingModel.NONE and feature.included > 0 and usage > feature.included:
        found.append(DueLimit(name, LimitKind.OVERAGE_STARTED, None, limit))
    if limit is not None and usage >= limit:
        found.append(DueLimit(name, LimitKind.LIMIT_REACHED, None, limit))
        if feature.enforcement is Enforcement.HARD and usage > limit:
            found.append(DueLimit(name, LimitKind.HARD_LIMIT_EXCEEDED, None, limit))
    return [item for item in found if item.mark not in emitted]


def first_due(feature: FeatureEntitlement, emitted: Collection[str]) -> Decimal | None:
    """A usage figure below which `due(feature, usage, emitted)` is surely empty (None: nothing can
    be due any more), so a caller checks one comparison per event instead of the whole rule."""
    if not watches(feature):
        return None
    name = feature.feature
    limit = feature.limit
    found: list[Decimal] = []
    if limit is not None and limit > 0:
        for threshold in set(feature.thresholds):
            if mark(name, LimitKind.THRESHOLD_CROSSED, threshold) not in emitted:
                found.append(_EXACT.divide(_EXACT.multiply(limit, threshold), 100))
    if (
        feature.pricing.model is not PricingModel.NONE
        and feature.included > 0
        and mark(name, LimitKind.OVERAGE_STARTED, None) not in emitted
    ):
        found.append(feature.included)
    if limit is not None and (
        mark(name, LimitKind.LIMIT_REACHED, None) not in emitted
        or (
            feature.enforcement is Enforcement.HARD
            and mark(name, LimitKind.HARD_LIMIT_EXCEEDED, None) not in emitted
        )
    ):
        found.append(limit)
    return min(found) if found else None
