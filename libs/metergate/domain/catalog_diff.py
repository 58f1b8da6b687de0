"""What applying a catalog file to the system of record would do, as a plan to read first (pure).

`diff_catalog(file, features=..., plans=..., subscriptions=...)` compares a parsed catalog file with
what PostgreSQL holds and lists, in order, features, add-ons, plan versions and subscriptions:

- `+` add: a feature, an add-on, a plan version or a subscription the database does not have;
- `=` unchanged;
- `~` change: a subscription whose plan, version, add-ons, negotiated values or price overrides
  differ from the file's (applied as a new dated version from the moment it is applied, never by
  editing the one in force);
- `!` refused: a published plan version whose terms (features, fees, the add-ons it allows, its
  negotiated paths) differ from the file's (published versions are never edited: the file must give
  it a new version number), a published add-on whose terms differ (it needs a new key), or a
  feature whose kind or meter changed. The differing fields are listed.

Subscriptions are matched by customer and compared by plan, version, add-on quantities, negotiated
values and price overrides (`target_of`). A file subscription's `overrides` that change only prices (`base_fee`, a feature's
`pricing`) are kept as the subscription's price overrides on the plan version. Overrides of
anything else (included units, a limit, a config value, the currency) make a contract of its own:
a plan `<plan>@<subscription id>` whose versions hold the contract's whole terms (published like
any version, never edited: a contract changed in the file is a new version of it), and the
subscription is pinned to it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from metergate.domain.catalog import (
    AddOn,
    Catalog,
    FeatureDefinition,
    PublishedPlan,
    Subscription,
)
from metergate.domain.subscriptions import PriceOverrides


class Action(enum.StrEnum):
    ADD = "+"
    SAME = "="
    CHANGE = "~"
    REFUSED = "!"
    FAILED = "x"  # applying it failed (catalog apply): rolled back alone, the others applied


@dataclass(frozen=True)
class Planned:
    action: Action
    subject: str  # "feature api_calls", "add-on extra_seats", "plan pro v2", "subscription of acme"
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
    overrides: PriceOverrides = field(default_factory=PriceOverrides)
    add_ons: Mapping[str, int] = field(default_factory=dict)
    variables: Mapping[str, Decimal | str] = field(default_factory=dict)


def _shown(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value == value.to_integral_value() else str(value)
    return "none" if value is None else str(value)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        found: dict[str, Any] = {}
        for key in sorted(value):
            found.update(_flat(f"{prefix}.{key}" if prefix else str(key), value[key]))
        return found
    if isinstance(value, list | tuple):
        return {prefix: [_flat("", item) if isinstance(item, dict) else item for item in value]}
    return {prefix: value}


def _terms(plan: PublishedPlan) -> dict[str, Any]:
    version = plan.terms
    return _flat(
        "",
        {
            "currency": version.currency,
            "base_fee": version.base_fee,
            "reset_period": version.reset_period.value,
            "features": {name: f.model_dump() for name, f in version.features.items()},
            "add_ons": sorted(plan.add_ons),
            "variable": sorted(plan.variable),
        },
    )


def _add_on_terms(add_on: AddOn) -> dict[str, Any]:
    return _flat(
        "",
        {
            "currency": add_on.currency,
            "fee": add_on.fee,
            "max_quantity": add_on.max_quantity,
            "features": {name: f.model_dump() for name, f in add_on.features.items()},
        },
    )


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [
        f"{key}: {_shown(old.get(key))} -> {_shown(new.get(key))}"
        for key in sorted(set(old) | set(new))
        if not _same(old.get(key), new.get(key))
    ]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        return a == b
    if isinstance(a, enum.Enum):
        a = a.value
    if isinstance(b, enum.Enum):
        b = b.value
    return bool(a == b)


def plan_version_changes(published: PublishedPlan, wanted: PublishedPlan) -> list[str]:
    """`field: published -> file` for every field whose value differs."""
    return _changes(_terms(published), _terms(wanted))


def add_on_changes(published: AddOn, wanted: AddOn) -> list[str]:
    """`field: published -> file` for every term of an add-on whose value differs."""
    return _changes(_add_on_terms(published), _add_on_terms(wanted))


def contract_of(subscription: Subscription, published: PublishedPlan) -> tuple[PriceOverrides, list[str]]:
    """The price overrides a file subscription's `overrides` amount to over its plan version, and
    `overrides.<field>: plan -> file` for each overridden field that is not a price."""
    plan = published.terms
    others: list[str] = []
    if subscription.currency != plan.currency:
        others.append(f"overrides.currency: {plan.currency} -> {subscription.currency}")
    base_fee = None if subscription.base_fee == plan.base_fee else subscription.base_fee
    pricing = {}
    mine = {feature.feature: feature for feature in subscription.features}
    for name in sorted(set(mine) | set(plan.features)):
        given, planned = mine.get(name), plan.features.get(name)
        if given is None or planned is None:
            others.append(f"overrides.features.{name}: {'added' if planned is None else 'removed'}")
            continue
        if given.pricing != planned.pricing:
            pricing[name] = given.pricing
        old = _flat("", planned.model_dump(exclude={"pricing"}))
        new = _flat("", given.model_dump(exclude={"pricing"}))
        others += [
            f"overrides.features.{name}.{key}: {_shown(old.get(key))} -> {_shown(new.get(key))}"
            for key in sorted(set(old) | set(new))
            if not _same(old.get(key), new.get(key))
        ]
    return PriceOverrides(
        base_fee=base_fee, pricing=pricing, add_on_fees=dict(subscription.add_on_fees)
    ), others


@dataclass(frozen=True)
class Target:
    """What a file subscription is applied as: a plan version, add-on quantities, negotiated values
    and price overrides, and, for a contract that changes more than prices, the contract's plan
    version to publish first (None when it is published already, or not needed)."""

    plan: str
    version: int
    overrides: PriceOverrides
    contract: PublishedPlan | None = None
    changes: tuple[str, ...] = ()  # the contract's non-price overrides, `field: plan -> file`
    add_ons: Mapping[str, int] = field(default_factory=dict)
    variables: Mapping[str, Decimal | str] = field(default_factory=dict)


def target_of(
    subscription: Subscription, file: Catalog, plans: Mapping[tuple[str, int], PublishedPlan]
) -> Target:
    base = file.plans[subscription.plan][subscription.version]
    overrides, others = contract_of(subscription, base)
    extras: dict[str, Any] = {
        "add_ons": dict(subscription.add_ons),
        "variables": dict(subscription.variables),
    }
    if not others:
        return Target(subscription.plan, subscription.version, overrides, **extras)
    key = f"{subscription.plan}@{subscription.subscription_id}"
    fees = PriceOverrides(add_on_fees=overrides.add_on_fees)  # the rest is in the contract's terms
    terms = subscription.contract(base)
    published = sorted(v for p, v in plans if p == key)
    for number in published:
        candidate = replace(terms, terms=replace(terms.terms, plan=key, version=number))
        if not plan_version_changes(plans[(key, number)], candidate):
            return Target(key, number, fees, None, tuple(others), **extras)
    number = (published[-1] + 1) if published else 1
    contract = replace(terms, terms=replace(terms.terms, plan=key, version=number))
    return Target(key, number, fees, contract, tuple(others), **extras)


def _prices(overrides: PriceOverrides) -> str:
    shown = [f"base fee {_shown(overrides.base_fee)}"] if overrides.base_fee is not None else []
    shown += [
        f"{name} {pricing.model.value} {_shown(pricing.unit_price)}"
        for name, pricing in sorted(overrides.pricing.items())
    ]
    shown += [f"{key} fee {_shown(fee)}" for key, fee in sorted(overrides.add_on_fees.items())]
    return f" at {', '.join(shown)}" if shown else ""


def _extras(add_ons: Mapping[str, int], variables: Mapping[str, Decimal | str]) -> str:
    shown = [f"{key} x{quantity}" for key, quantity in sorted(add_ons.items())]
    shown += [f"{path}={_shown(value)}" for path, value in sorted(variables.items())]
    return f" with {', '.join(shown)}" if shown else ""


def values_differ(held: Subscribed, target: Target) -> bool:
    """Whether the negotiated values the file gives differ from the ones in force (as numbers: a
    value written 5e7 is 50000000)."""
    return bool(_value_changes(held, target))


def _value_changes(held: Subscribed, target: Target) -> list[str]:
    """`PATH a -> b` for each negotiated value that differs."""
    found = []
    for path in sorted(set(held.variables) | set(target.variables)):
        old, new = held.variables.get(path), target.variables.get(path)
        if _shown(old) != _shown(new):
            found.append(f"{path} {_shown(old)} -> {_shown(new)}")
    return found


def _term_changes(held: Subscribed, target: Target) -> list[str]:
    """`add-on K a -> b` for each add-on quantity that differs, then the negotiated values'."""
    found = [
        f"add-on {key} {held.add_ons.get(key, 0)} -> {target.add_ons.get(key, 0)}"
        for key in sorted(set(held.add_ons) | set(target.add_ons))
        if held.add_ons.get(key, 0) != target.add_ons.get(key, 0)
    ]
    return found + _value_changes(held, target)


def diff_catalog(
    file: Catalog,
    *,
    features: Mapping[str, FeatureDefinition],
    plans: Mapping[tuple[str, int], PublishedPlan],
    subscriptions: Mapping[str, Subscribed],
    add_ons: Mapping[str, AddOn] | None = None,
) -> list[Planned]:
    planned: list[Planned] = []
    published_add_ons = add_ons or {}
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
    for key, add_on in sorted(file.add_ons.items()):
        subject = f"add-on {key}"
        known_add_on = published_add_ons.get(key)
        if known_add_on is None:
            planned.append(
                Planned(
                    Action.ADD,
                    subject,
                    f"{_shown(add_on.fee)} {add_on.currency} per unit, {_count(len(add_on.features), 'feature')}"
                    + (f", at most {add_on.max_quantity}" if add_on.max_quantity is not None else ""),
                )
            )
            continue
        differences = add_on_changes(known_add_on, add_on)
        if not differences:
            planned.append(Planned(Action.SAME, subject, ""))
            continue
        planned.append(
            Planned(
                Action.REFUSED,
                subject,
                "published with other terms; published add-ons are never edited (give it a new key)",
                tuple(differences),
            )
        )
    for plan, versions in sorted(file.plans.items()):
        for number, wanted in sorted(versions.items()):
            subject = f"plan {plan} v{number}"
            published = plans.get((plan, number))
            if published is None:
                allows = (f", allows {', '.join(sorted(wanted.add_ons))}" if wanted.add_ons else "") + (
                    f", negotiated {', '.join(sorted(wanted.variable))}" if wanted.variable else ""
                )
                planned.append(
                    Planned(
                        Action.ADD,
                        subject,
                        f"base fee {_shown(wanted.terms.base_fee)} {wanted.terms.currency}, "
                        f"{_count(len(wanted.terms.features), 'feature')}{allows}",
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
        target = target_of(sub, file, plans)
        if target.contract is not None:
            planned.append(
                Planned(
                    Action.ADD,
                    f"plan {target.plan} v{target.version}",
                    f"the contract of {customer}: {sub.plan} v{sub.version} with its overrides",
                    target.changes,
                )
            )
        elif target.changes:
            planned.append(
                Planned(Action.SAME, f"plan {target.plan} v{target.version}", f"the contract of {customer}")
            )
        sub = replace(sub, plan=target.plan, version=target.version)
        overrides = target.overrides
        prices = _prices(overrides)
        extras = _extras(target.add_ons, target.variables)
        if held is None:
            planned.append(
                Planned(Action.ADD, subject, f"{sub.plan} v{sub.version}{extras}{prices} from now")
            )
            continue
        terms = _term_changes(held, target)
        repriced = held.overrides.as_dict() != overrides.as_dict()
        if (held.plan, held.version) != (sub.plan, sub.version):
            planned.append(
                Planned(
                    Action.CHANGE,
                    subject,
                    f"{held.plan} v{held.version} -> {sub.plan} v{sub.version}{extras}{prices}, a new version "
                    f"from now ({held.subscription_id})",
                )
            )
        elif repriced and not terms:
            planned.append(
                Planned(
                    Action.CHANGE,
                    subject,
                    f"{held.plan} v{held.version}{_prices(held.overrides) or ' at list prices'} -> "
                    f"{prices.removeprefix(' at ') or 'list prices'}, a new version from now ({held.subscription_id})",
                )
            )
        elif terms:
            if repriced:
                terms.append(
                    f"prices {_prices(held.overrides).removeprefix(' at ') or 'list prices'} -> "
                    f"{prices.removeprefix(' at ') or 'list prices'}"
                )
            planned.append(
                Planned(
                    Action.CHANGE,
                    subject,
                    f"{held.plan} v{held.version}: {'; '.join(terms)}, a new version from now ({held.subscription_id})",
                )
            )
        else:
            planned.append(
                Planned(
                    Action.SAME,
                    subject,
                    f"{held.plan} v{held.version}{extras}{prices} ({held.subscription_id})",
                )
            )
    return planned


def summary(planned: list[Planned]) -> str:
    counts = {action: sum(1 for p in planned if p.action is action) for action in Action}
    return (
        f"Plan: {counts[Action.ADD]} to add, {counts[Action.CHANGE]} to change, "
        f"{counts[Action.REFUSED]} refused, {counts[Action.SAME]} unchanged."
    )
