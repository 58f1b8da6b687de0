"""Provisioning use cases: customers and subscriptions, each change in one PostgreSQL transaction.

An entry point (the CLI, later the admin API) decodes its input into these calls and prints what
they return; the rules live in `metergate.domain.subscriptions`, the SQL in
`metergate.db.subscription_store`. Each change: lock the subscription, load its history, apply the
pure change with the injected `now`, write versions + audit + outbox, commit. `who` is the actor
recorded in the audit (a CLI user, an API key's name).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError

from metergate.db import subscription_store as store
from metergate.domain import subscriptions as rules
from metergate.domain.catalog import Catalog, FeatureDefinition, PlanVersion
from metergate.domain.catalog_diff import (
    Action,
    Planned,
    Subscribed,
    Target,
    diff_catalog,
    target_of,
    values_differ,
)
from metergate.domain.records import FeatureEntitlement, FeatureKind, Pricing, ResetPeriod
from metergate.domain.subscriptions import AddOn, History, PriceOverrides, PublishedPlan, When
from metergate.errors import InvalidInput, SubscriptionError

At = When | datetime

NOT_FOUND, CONFLICT = store.NOT_FOUND, store.CONFLICT
MAX_VERSION = 2_147_483_647  # a plan version number is a PostgreSQL integer


@dataclass(frozen=True)
class Changed:
    history: History
    outbox_ids: list[int]


def _plan(conn: Connection, plan: str, version: int | None, *, field: str = "plan") -> PublishedPlan:
    found = store.load_plan_version(conn, plan, version)
    if found is not None:
        return found
    versions = store.plan_versions(conn, plan)
    if versions:
        raise SubscriptionError(
            f"version: plan {plan} has versions {', '.join(map(str, versions))}, not {version}",
            field="version",
            reason=NOT_FOUND,
        )
    raise SubscriptionError(f"{field}: no published plan {plan!r}", field=field, reason=NOT_FOUND)


def _history(conn: Connection, subscription_id: str, *, for_update: bool) -> History:
    rules.check_id("subscription_id", subscription_id)
    history = store.load_history(conn, subscription_id, for_update=for_update)
    if history is None:
        raise SubscriptionError(
            f"subscription_id: no subscription {subscription_id!r}", field="subscription_id", reason=NOT_FOUND
        )
    return history


def create_customer(engine: Engine, customer_id: str, *, name: str | None, who: str, now: datetime) -> bool:
    rules.check_id("customer_id", customer_id)
    try:
        with engine.begin() as conn:
            return store.create_customer(conn, customer_id, name=name, who=who, now=now)
    except IntegrityError:  # created at the same moment by another session
        with engine.begin() as conn:
            return store.create_customer(conn, customer_id, name=name, who=who, now=now)


def show_customer(engine: Engine, customer_id: str) -> tuple[store.Customer, list[History]]:
    rules.check_id("customer_id", customer_id)
    with engine.begin() as conn:
        customer = store.get_customer(conn, customer_id)
        if customer is None:
            raise SubscriptionError(
                f"customer_id: no customer {customer_id!r}", field="customer_id", reason=NOT_FOUND
            )
        histories = [_history(conn, s, for_update=False) for s in store.subscriptions_of(conn, customer_id)]
    return customer, histories


def create_subscription(
    engine: Engine,
    *,
    subscription_id: str,
    customer_id: str,
    plan: str,
    version: int | None,
    start: datetime | None,
    anchor: datetime | None,
    reset_period: ResetPeriod | None,
    add_ons: Mapping[str, int],
    variables: Mapping[str, Decimal | str],
    overrides: PriceOverrides,
    who: str,
    now: datetime,
    record_customer: bool = False,
) -> Changed:
    """Subscribe `customer_id` (with `record_customer`, the customer is recorded in the same
    transaction when it is not yet: a catalog file's subscriptions name their customers)."""
    try:
        with engine.begin() as conn:
            if record_customer and store.get_customer(conn, customer_id) is None:
                rules.check_id("customer_id", customer_id)
                store.create_customer(conn, customer_id, name=None, who=who, now=now)
            if store.get_customer(conn, customer_id) is None:
                raise SubscriptionError(
                    f"customer: no customer {customer_id!r} (create it first: metergate customers create {customer_id})",
                    field="customer",
                    reason=NOT_FOUND,
                )
            if store.load_history(conn, subscription_id) is not None:
                raise SubscriptionError(
                    f"subscription_id: {subscription_id!r} exists already (change it with `subscriptions change`)",
                    field="subscription_id",
                    reason=CONFLICT,
                )
            history = rules.create(
                subscription_id=subscription_id,
                customer_id=customer_id,
                plan=_plan(conn, plan, version),
                start=start or now,
                now=now,
                anchor=anchor,
                reset_period=reset_period,
                add_ons=add_ons,
                variables=variables,
                overrides=overrides,
            )
            outbox_ids = store.save_history(conn, None, history, action="create", who=who, now=now)
    except IntegrityError:  # the same id created at the same moment by another session
        raise SubscriptionError(
            f"subscription_id: {subscription_id!r} exists already (change it with `subscriptions change`)",
            field="subscription_id",
            reason=CONFLICT,
        ) from None
    return Changed(history, outbox_ids)


@dataclass(frozen=True)
class Change:
    """What `subscriptions change` asks for; any combination, applied in this order."""

    plan: str | None = None
    version: int | None = None
    add_ons: Mapping[str, int] | None = None  # key -> quantity (0 removes)
    variables: Mapping[str, Decimal | str] | None = None
    overrides: OverrideUpdate | None = None


@dataclass(frozen=True)
class OverrideUpdate:
    """Price overrides to set on top of the subscription's own (`clear` first drops them all)."""

    base_fee: Decimal | None = None
    pricing: Mapping[str, Pricing] | None = None
    add_on_fees: Mapping[str, Decimal] | None = None
    clear: bool = False

    def over(self, current: PriceOverrides) -> PriceOverrides:
        base = PriceOverrides() if self.clear else current
        return PriceOverrides(
            base_fee=self.base_fee if self.base_fee is not None else base.base_fee,
            pricing={**base.pricing, **(self.pricing or {})},
            add_on_fees={**base.add_on_fees, **(self.add_on_fees or {})},
        )


def change_subscription(
    engine: Engine,
    subscription_id: str,
    change: Change,
    *,
    at: At,
    who: str,
    now: datetime,
    dry_run: bool = False,
) -> Changed:
    """Apply `change` from `at` on; with `dry_run` nothing is written (the history it would make
    is returned, with no outbox ids: `preview` bills it)."""
    if not any(
        v is not None
        for v in (change.plan, change.version, change.add_ons, change.variables, change.overrides)
    ):
        raise SubscriptionError(
            "change: nothing to change (give --plan/--version, --add-on, --set or an override)",
            field="change",
        )
    with engine.begin() as conn:
        before = _history(conn, subscription_id, for_update=True)
        after = before
        moment = rules.effective_moment(before, at, now)  # one moment for every part of the change
        add_ons = sorted((change.add_ons or {}).items())
        for key, quantity in add_ons:  # removals first: the plan changed to may not allow the add-on
            if quantity == 0:
                after = rules.set_add_on(after, key, 0, at=moment, now=now)
        if change.plan is not None or change.version is not None:
            plan_key = change.plan or after.latest.plan.plan
            target = _plan(conn, plan_key, change.version)
            same_plan = plan_key == after.latest.plan.plan
            overrides = None
            if change.overrides is not None:
                overrides = change.overrides.over(after.latest.overrides if same_plan else PriceOverrides())
            variables = change.variables
            if variables is not None and same_plan:
                variables = {
                    **{k: v for k, v in after.latest.variables.items() if k in target.variable},
                    **variables,
                }
            after = rules.change_plan(
                after, target, at=moment, now=now, variables=variables, overrides=overrides
            )
        else:
            if change.variables is not None:
                after = rules.set_variables(after, change.variables, at=moment, now=now)
            if change.overrides is not None:
                after = rules.set_overrides(
                    after, change.overrides.over(after.latest.overrides), at=moment, now=now
                )
        for key, quantity in add_ons:  # then additions and resizes, on the plan changed to
            if quantity:
                after = rules.set_add_on(after, key, quantity, at=moment, now=now)
        if dry_run:
            return Changed(after, [])
        outbox_ids = store.save_history(conn, before, after, action="change", who=who, now=now)
    return Changed(after, outbox_ids)


def cancel_subscription(engine: Engine, subscription_id: str, *, at: At, who: str, now: datetime) -> Changed:
    with engine.begin() as conn:
        before = _history(conn, subscription_id, for_update=True)
        after = rules.cancel(before, at=at, now=now)
        outbox_ids = store.save_history(conn, before, after, action="cancel", who=who, now=now)
    return Changed(after, outbox_ids)


def unschedule_subscription(engine: Engine, subscription_id: str, *, who: str, now: datetime) -> Changed:
    """Drop what is scheduled after `now` (a change or a cancellation at period end)."""
    with engine.begin() as conn:
        before = _history(conn, subscription_id, for_update=True)
        after = rules.unschedule(before, now=now)
        outbox_ids = store.save_history(conn, before, after, action="unschedule", who=who, now=now)
    return Changed(after, outbox_ids)


def preview_change(
    engine: Engine, subscription_id: str, change: Change, *, at: At, now: datetime
) -> tuple[History, rules.PeriodBill, rules.PeriodBill]:
    """The history the change would make, and the fees of the period it takes effect in as they
    are and as they would be (nothing is written)."""
    before = show_subscription(engine, subscription_id)
    after = change_subscription(engine, subscription_id, change, at=at, who="preview", now=now, dry_run=True)
    moment = rules.effective_moment(before, at, now)
    if before.end is not None and moment >= before.end:
        moment = now
    return after.history, rules.bill_period(before, moment), rules.bill_period(after.history, moment)


def preview_fees(engine: Engine, subscription_id: str, moment: datetime) -> rules.PeriodBill:
    """The base and add-on fees of the billing period containing `moment`, prorated by time in
    force (usage is priced by the rating consumer)."""
    with engine.begin() as conn:
        history = _history(conn, subscription_id, for_update=False)
    return rules.bill_period(history, moment)


@dataclass(frozen=True)
class AuditEntry:
    """One audited change: when, who (a CLI user `cli:<login>`, an API key's name), what, to which
    entity, with the entity as JSON before (None: it did not exist) and after."""

    at: datetime
    who: str
    action: str
    entity: str  # customer, subscription, plan_version, add_on
    entity_id: str
    before: Any
    after: Any

    @property
    def changes(self) -> list[str]:
        """`path: before -> after` for each value that differs (a subscription's versions by their
        index, from 0), the way the CLI prints an entry."""
        old, new = _leaves("", self.before), _leaves("", self.after)
        return [
            f"{path}: {_audited(old.get(path))} -> {_audited(new.get(path))}"
            for path in sorted(set(old) | set(new), key=_path_order)
            if old.get(path) != new.get(path)
        ]


def _leaves(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        found: dict[str, Any] = {}
        for key, item in value.items():
            found.update(_leaves(f"{prefix}.{key}" if prefix else str(key), item))
        return found
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        found = {}
        for index, item in enumerate(value):
            found.update(_leaves(f"{prefix}.{index}" if prefix else str(index), item))
        return found
    return {prefix: value} if prefix else {}


def _path_order(path: str) -> list[tuple[int, str]]:
    return [(int(part), "") if part.isdigit() else (1 << 62, part) for part in path.split(".")]


def _audited(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _entries(rows: Sequence[Any]) -> list[AuditEntry]:
    return [AuditEntry(r.at, r.who, r.action, r.entity, r.entity_id, r.before, r.after) for r in rows]


def audit_trail(engine: Engine, subscription_id: str) -> list[AuditEntry]:
    """Who changed the subscription, when, how, with the versions before and after."""
    rules.check_id("subscription_id", subscription_id)
    with engine.begin() as conn:
        _history(conn, subscription_id, for_update=False)
        return _entries(store.audit_trail(conn, "subscription", subscription_id))


def customer_audit_trail(engine: Engine, customer_id: str) -> list[AuditEntry]:
    """Every change of a customer and of its subscriptions, oldest first."""
    rules.check_id("customer_id", customer_id)
    with engine.begin() as conn:
        if store.get_customer(conn, customer_id) is None:
            raise SubscriptionError(
                f"customer_id: no customer {customer_id!r}", field="customer_id", reason=NOT_FOUND
            )
        return _entries(store.customer_audit_trail(conn, customer_id))


def show_subscription(engine: Engine, subscription_id: str) -> History:
    with engine.begin() as conn:
        return _history(conn, subscription_id, for_update=False)


def migrate(
    engine: Engine,
    *,
    plan: str,
    from_version: int,
    to_version: int,
    at: At,
    who: str,
    now: datetime,
    on_each: Callable[[str, History], None] | None = None,
) -> list[Changed]:
    """Move every subscription whose newest version pins `plan` v`from_version` to v`to_version`.

    All or nothing: one transaction; a subscription the new version cannot take (an add-on it does
    not allow, a negotiated value it needs) stops the migration with the subscription named.
    """
    if from_version == to_version:
        raise SubscriptionError(f"to: expected another version than {from_version}", field="to")
    with engine.begin() as conn:
        _plan(conn, plan, from_version, field="plan")
        target = _plan(conn, plan, to_version, field="plan")
        changed: list[Changed] = []
        for subscription_id in store.subscriptions_on(conn, plan, from_version):
            before = _history(conn, subscription_id, for_update=True)
            try:
                after = rules.change_plan(before, target, at=at, now=now)
            except SubscriptionError as exc:
                raise SubscriptionError(f"{subscription_id}: {exc.message}", field=exc.field) from None
            outbox_ids = store.save_history(conn, before, after, action="migrate", who=who, now=now)
            changed.append(Changed(after, outbox_ids))
            if on_each is not None:
                on_each(subscription_id, after)
    return changed


def publish_catalog(engine: Engine, catalog: Catalog, *, who: str, now: datetime) -> tuple[int, int]:
    """Publish a catalog file's features and plan versions (never editing a published one: a
    version whose terms differ is refused, naming it). Returns (features added, versions added)."""
    with engine.begin() as conn:
        features = sum(
            store.publish_feature(conn, feature, who=who, now=now) for feature in catalog.features.values()
        )
        for _key, add_on in sorted(catalog.add_ons.items()):
            store.publish_add_on(conn, add_on, who=who, now=now)
        versions = 0
        for _plan_key, numbered in sorted(catalog.plans.items()):
            for _number, published in sorted(numbered.items()):
                versions += store.publish_plan_version(conn, published, who=who, now=now)
    return features, versions


# ---------------------------------------------------------------------------------------------
# plans and add-ons (the admin API publishes them one at a time; a catalog file all at once)


def list_plans(engine: Engine) -> list[store.PlanListing]:
    with engine.begin() as conn:
        return store.list_plans(conn)


def show_plan(engine: Engine, plan: str) -> store.PlanListing:
    rules.check_id("plan", plan)
    with engine.begin() as conn:
        for listed in store.list_plans(conn):
            if listed.plan == plan:
                return listed
    raise SubscriptionError(f"plan: no published plan {plan!r}", field="plan", reason=NOT_FOUND)


def show_plan_version(engine: Engine, plan: str, version: int | None) -> PublishedPlan:
    """A published plan version (the latest when `version` is None)."""
    rules.check_id("plan", plan)
    with engine.begin() as conn:
        return _plan(conn, plan, version)


def _entitlements(
    conn: Connection, terms: Mapping[str, Mapping[str, Any]], *, field: str
) -> dict[str, FeatureEntitlement]:
    """Feature terms as given (`enabled`, `config_value`, `included`, `limit`, `enforcement`,
    `thresholds`, `pricing`), completed with each feature's kind and meter as published."""
    known = store.load_features(conn)
    found: dict[str, FeatureEntitlement] = {}
    for name, given in sorted(terms.items()):
        definition = known.get(name)
        if definition is None:
            shown = ", ".join(sorted(known)) or "none published yet"
            raise SubscriptionError(
                f"{field}.{name}: no published feature {name!r} (published: {shown})", field=f"{field}.{name}"
            )
        try:
            found[name] = FeatureEntitlement.model_validate(
                {**given, "feature": name, "kind": definition.kind, "meter": definition.meter}
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join([field, name, *(str(part) for part in first["loc"])])
            raise SubscriptionError(
                f"{where}: {first['msg'].removeprefix('Value error, ')}", field=where
            ) from None
    return found


def _money(value: Decimal, field: str) -> Decimal:
    if not value.is_finite() or value < 0:
        raise SubscriptionError(f'{field}: expected an amount >= 0 such as "49.00", got {value}', field=field)
    return value


def _currency(value: str) -> str:
    if len(value) != 3 or not value.isascii() or not value.isalpha():
        raise SubscriptionError(
            f"currency: expected an ISO 4217 code such as USD, got {value!r}", field="currency"
        )
    return value.upper()


def publish_plan_version(
    engine: Engine,
    *,
    plan: str,
    version: int | None,
    currency: str,
    base_fee: Decimal,
    reset_period: ResetPeriod,
    features: Mapping[str, Mapping[str, Any]],
    variable: Sequence[str] = (),
    add_ons: Sequence[str] = (),
    name: str | None = None,
    who: str,
    now: datetime,
) -> tuple[PublishedPlan, bool]:
    """Publish a new version of `plan` (the next number when `version` is None). A published version
    is never edited: the same content again changes nothing (False), other content under a
    published number is refused (reason `conflict`) naming the next free number."""
    rules.check_id("plan", plan)
    if version is not None and version < 1:
        raise SubscriptionError(f"version: expected a whole number >= 1, got {version}", field="version")
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"plan:{plan}"})
        number = version if version is not None else max(store.plan_versions(conn, plan), default=0) + 1
        if number > MAX_VERSION:
            raise SubscriptionError(
                f"version: expected a whole number up to {MAX_VERSION}, got {number}", field="version"
            )
        allowed: dict[str, AddOn] = {}
        for index, key in enumerate(add_ons):
            found = store.load_add_on(conn, key)
            if found is None:
                raise SubscriptionError(
                    f"add_ons.{index}: no published add-on {key!r} (publish it first)",
                    field=f"add_ons.{index}",
                )
            allowed[key] = found
        published = PublishedPlan(
            PlanVersion(
                plan=plan,
                version=number,
                currency=_currency(currency),
                base_fee=_money(base_fee, "base_fee"),
                reset_period=reset_period,
                features=_entitlements(conn, features, field="features"),
            ),
            variable=frozenset(variable),
            add_ons=allowed,
        )
        for key, add_on in allowed.items():
            if add_on.currency != published.terms.currency:
                raise SubscriptionError(
                    f"add_ons: {key} is priced in {add_on.currency}, the plan in {published.terms.currency}",
                    field="add_ons",
                )
        created = store.publish_plan_version(conn, published, who=who, now=now, name=name)
    return published, created


def list_add_ons(engine: Engine) -> list[AddOn]:
    with engine.begin() as conn:
        return store.list_add_ons(conn)


def show_add_on(engine: Engine, key: str) -> AddOn:
    rules.check_id("add_on", key)
    with engine.begin() as conn:
        found = store.load_add_on(conn, key)
    if found is None:
        raise SubscriptionError(f"add_on: no published add-on {key!r}", field="add_on", reason=NOT_FOUND)
    return found


def publish_add_on(
    engine: Engine,
    *,
    key: str,
    currency: str,
    fee: Decimal,
    features: Mapping[str, Mapping[str, Any]],
    name: str | None = None,
    max_quantity: int | None = None,
    who: str,
    now: datetime,
) -> tuple[AddOn, bool]:
    """Publish an add-on once: the same terms again change nothing (False); other terms under its
    key are refused (reason `conflict`): published add-ons are never edited."""
    rules.check_id("key", key)
    if max_quantity is not None and max_quantity < 1:
        raise SubscriptionError(
            f"max_quantity: expected a whole number >= 1 (or none), got {max_quantity}", field="max_quantity"
        )
    with engine.begin() as conn:
        add_on = AddOn(
            key=key,
            currency=_currency(currency),
            fee=_money(fee, "fee"),
            features=_entitlements(conn, features, field="features"),
            name=name,
            max_quantity=max_quantity,
        )
        created = store.publish_add_on(conn, add_on, who=who, now=now)
    return add_on, created


def list_features(engine: Engine) -> list[FeatureDefinition]:
    with engine.begin() as conn:
        return [found for _, found in sorted(store.load_features(conn).items())]


def publish_feature(
    engine: Engine,
    *,
    feature: str,
    kind: FeatureKind,
    meter: str | None,
    description: str | None,
    who: str,
    now: datetime,
) -> tuple[FeatureDefinition, bool]:
    """Define a feature once (its kind and meter never change; the same definition again: False)."""
    rules.check_id("feature", feature)
    if (kind is FeatureKind.METERED) != (meter is not None):
        raise SubscriptionError(
            "meter: a metered feature names its meter; a boolean or config feature has none", field="meter"
        )
    if meter is not None:
        rules.check_id("meter", meter)
    definition = FeatureDefinition(feature=feature, kind=kind, meter=meter, description=description)
    with engine.begin() as conn:
        created = store.publish_feature(conn, definition, who=who, now=now)
    return definition, created


# ---------------------------------------------------------------------------------------------
# a catalog file as code: `metergate catalog plan` (the diff) and `catalog apply` (the diff, done)


def _held(conn: Connection, now: datetime) -> dict[str, Subscribed]:
    held: dict[str, Subscribed] = {}
    for customer, (subscription_id, plan, version) in store.plans_in_force(conn, now).items():
        history = store.load_history(conn, subscription_id)
        in_force = None if history is None else history.in_force(now)
        if in_force is None:
            held[customer] = Subscribed(subscription_id, plan, version)
            continue
        held[customer] = Subscribed(
            subscription_id,
            plan,
            version,
            in_force.overrides,
            dict(in_force.add_ons),
            dict(in_force.variables),
        )
    return held


def plan_catalog(engine: Engine, catalog: Catalog, *, now: datetime) -> list[Planned]:
    """What applying `catalog` at `now` would add, change or refuse (nothing is written)."""
    with engine.begin() as conn:
        return diff_catalog(
            catalog,
            features=store.load_features(conn),
            plans=store.published_terms(conn),
            subscriptions=_held(conn, now),
            add_ons={add_on.key: add_on for add_on in store.list_add_ons(conn)},
        )


def _subscription_subject(item: Planned) -> str | None:
    prefix = "subscription of "
    return item.subject.removeprefix(prefix) if item.subject.startswith(prefix) else None


def apply_catalog(
    engine: Engine,
    catalog: Catalog,
    *,
    who: str,
    now: datetime,
    on_each: Callable[[Planned], None] | None = None,
) -> list[Planned]:
    """Apply the diff of `catalog` against PostgreSQL at `now`.

    1. Refuse the whole file, writing nothing, when the diff refuses anything (a published plan
       version or add-on with other terms, a feature whose kind changed): the planned items are
       returned and the caller names them.
    2. One transaction: the new features, add-ons, plan versions and contract plans (a published
       one is never edited).
    3. Each subscription to add or change in a transaction of its own (created from `now`, with its
       customer when the customer is new, or a new dated version from `now`), with its audit row and
       outbox rows. One that cannot be applied (a rule of its plan version, a change already
       scheduled, an id another customer holds) is rolled back alone and comes back as an
       `Action.FAILED` item whose summary is the one-line reason naming the field; the others apply.

    `on_each` is called with each item done (or failed), in order. Returns the items, failures in
    place of the items they were."""
    planned = plan_catalog(engine, catalog, now=now)
    if any(item.action is Action.REFUSED for item in planned):
        return planned
    with engine.begin() as conn:
        published = store.published_terms(conn)
    targets = {c: target_of(sub, catalog, published) for c, sub in catalog.subscriptions.items()}
    publish_catalog(engine, catalog, who=who, now=now)
    with engine.begin() as conn:
        for target in targets.values():
            if target.contract is not None:  # a contract that changes more than prices: its own plan
                store.publish_plan_version(conn, target.contract, who=who, now=now)
        held = _held(conn, now)
    done: list[Planned] = []
    for item in planned:
        customer = _subscription_subject(item)
        if customer is not None and item.action in (Action.ADD, Action.CHANGE):
            try:
                _apply_subscription(
                    engine, catalog, customer, targets[customer], held, item, who=who, now=now
                )
            except InvalidInput as exc:  # bad input of this subscription: the others go on
                known = held.get(customer)
                named = known or catalog.subscriptions[customer]
                item = Planned(
                    Action.FAILED, f"{item.subject} ({named.subscription_id})", str(exc).splitlines()[0]
                )
        done.append(item)
        if on_each is not None:
            on_each(item)
    return done


def _apply_subscription(
    engine: Engine,
    catalog: Catalog,
    customer: str,
    target: Target,
    held: Mapping[str, Subscribed],
    item: Planned,
    *,
    who: str,
    now: datetime,
) -> None:
    sub = catalog.subscriptions[customer]
    if item.action is Action.ADD:
        create_subscription(
            engine,
            subscription_id=sub.subscription_id,
            customer_id=customer,
            plan=target.plan,
            version=target.version,
            start=now,
            anchor=sub.anchor,
            reset_period=sub.reset_period,
            add_ons=target.add_ons,
            variables=target.variables,
            overrides=target.overrides,
            who=who,
            now=now,
            record_customer=True,
        )
        return
    current = held[customer]
    moved = (current.plan, current.version) != (target.plan, target.version)
    quantities = {key: target.add_ons.get(key, 0) for key in set(current.add_ons) | set(target.add_ons)}
    add_ons = {k: q for k, q in quantities.items() if q != current.add_ons.get(k, 0)}
    overrides = target.overrides
    change_subscription(
        engine,
        current.subscription_id,
        Change(
            plan=target.plan if moved else None,
            version=target.version if moved else None,
            add_ons=add_ons or None,
            variables=dict(target.variables) if (moved or values_differ(current, target)) else None,
            overrides=OverrideUpdate(
                base_fee=overrides.base_fee,
                pricing=overrides.pricing,
                add_on_fees=overrides.add_on_fees,
                clear=True,
            )
            if moved or overrides.as_dict() != current.overrides.as_dict()
            else None,
        ),
        at=When.IMMEDIATELY,
        who=who,
        now=now,
    )
