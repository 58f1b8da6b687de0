"""What applying a catalog file to the system of record would do, as a plan to read first (pure).

`diff_catalog(file, features=..., plans=..., subscriptions=...)` compares a parsed catalog file with
what PostgreSQL holds and lists, in order, features, plan versions and subscriptions:

- `+` add: a feature, a plan version or a subscription the database does not have;
- `=` unchanged;
- `~` change: a subscription whose plan or version differs from the file's (applied as a new dated
  version from the moment it is applied, never by editing the one in force);
- `!` refused: a published plan version whose terms differ from the file's (published versions are
  never edited: the file must give it a new version number), or a feature whose kind or meter
  changed. The differing fields are listed.

Subscriptions are matched by customer and compared by plan and version; the per-contract
`overrides` of a file's subscription are not compared yet (they are not part of the plan).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from metergate.domain.catalog import Catalog, FeatureDefinition, PlanVersion


class Action(enum.StrEnum):
    ADD = "+"
    SAME = "="
    CHANGE = "~"
    REFUSED = "!"


@dataclass(frozen=True)
class Planned:
    action: Action
    subject: str  # "feature api_calls", "plan pro v2", "subscription acme"
    summary: str
    details: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        head = f"{self.action.value} {self.subject}" + (f": {self.summary}" if self.summary else "")
        return [head, *(f"    {detail}" for detail in self.details)]


@dataclass(frozen=True)
class Subscribed:
    """What the database holds for a customer's subscription, as far as the diff needs it."""

    subscription_id: str
    plan: str
    version: int


def _shown(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value == value.to_integral_value() else str(value)
    return "none" if value is None else str(value)


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        found: dict[str, Any] = {}
        for key in sorted(value):
            found.update(_flat(f"{prefix}.{key}" if prefix else str(key), value[key]))
        return found
    if isinstance(value, list | tuple):
        return {prefix: [_flat("", item) if isinstance(item, dict) else item for item in value]}
    return {prefix: value}


def _terms(version: PlanVersion) -> dict[str, Any]:
    return _flat(
        "",
        {
            "currency": version.currency,
            "base_fee": version.base_fee,
            "reset_period": version.reset_period.value,
            "features": {name: f.model_dump() for name, f in version.features.items()},
        },
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        return a == b
    if isinstance(a, enum.Enum):
        a = a.value
    if isinstance(b, enum.Enum):
        b = b.value
    return bool(a == b)


def plan_version_changes(published: PlanVersion, wanted: PlanVersion) -> list[str]:
    """`field: published -> file` for every field whose value differs."""
    old, new = _terms(published), _terms(wanted)
    return [
        f"{key}: {_shown(old.get(key))} -> {_shown(new.get(key))}"
        for key in sorted(set(old) | set(new))
        if not _same(old.get(key), new.get(key))
    ]


def diff_catalog(
    file: Catalog,
    *,
    features: Mapping[str, FeatureDefinition],
    plans: Mapping[tuple[str, int], PlanVersion],
    subscriptions: Mapping[str, Subscribed],
) -> list[Planned]:
    planned: list[Planned] = []
    for name, feature in sorted(file.features.items()):
        known = features.get(name)
        kind = feature.kind.value + (f" on meter {feature.meter}" if feature.meter else "")
        if known is None:
            planned.append(Planned(Action.ADD, f"feature {name}", kind))
        elif (known.kind, known.meter) != (feature.kind, feature.meter):
            was = known.kind.value + (f" on meter {known.meter}" if known.meter else "")
            planned.append(
                Planned(
                    Action.REFUSED,
                    f"feature {name}",
                    f"a feature's kind and meter never change ({was} -> {kind})",
                )
            )
        else:
            planned.append(Planned(Action.SAME, f"feature {name}", ""))
    for plan, versions in sorted(file.plans.items()):
        for number, wanted in sorted(versions.items()):
            subject = f"plan {plan} v{number}"
            published = plans.get((plan, number))
            if published is None:
                planned.append(
                    Planned(
                        Action.ADD,
                        subject,
                        f"base fee {_shown(wanted.base_fee)} {wanted.currency}, {len(wanted.features)} features",
                    )
                )
                continue
            changes = plan_version_changes(published, wanted)
            if not changes:
                planned.append(Planned(Action.SAME, subject, ""))
                continue
            latest = max(v for p, v in (*plans, *((plan, n) for n in versions)) if p == plan)
            planned.append(
                Planned(
                    Action.REFUSED,
                    subject,
                    f"published with other terms; published versions are never edited (give it version {latest + 1})",
                    tuple(changes),
                )
            )
    for customer, sub in sorted(file.subscriptions.items()):
        subject = f"subscription of {customer}"
        held = subscriptions.get(customer)
        if held is None:
            planned.append(Planned(Action.ADD, subject, f"{sub.plan} v{sub.version} from now"))
        elif (held.plan, held.version) != (sub.plan, sub.version):
            planned.append(
                Planned(
                    Action.CHANGE,
                    subject,
                    f"{held.plan} v{held.version} -> {sub.plan} v{sub.version}, a new version from now "
                    f"({held.subscription_id})",
                )
            )
        else:
            planned.append(
                Planned(Action.SAME, subject, f"{held.plan} v{held.version} ({held.subscription_id})")
            )
    return planned


def summary(planned: list[Planned]) -> str:
    counts = {action: sum(1 for p in planned if p.action is action) for action in Action}
    return (
        f"Plan: {counts[Action.ADD]} to add, {counts[Action.CHANGE]} to change, "
        f"{counts[Action.REFUSED]} refused, {counts[Action.SAME]} unchanged."
    )
