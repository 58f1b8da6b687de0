"""Catalog and subscriptions in PostgreSQL (rules in `metergate.domain.subscriptions`).

Every function takes a connection inside the caller's transaction: a change of a subscription
writes, in one transaction, its versions, one audit row (who, when, before, after) and one outbox
row for `entitlements.snapshots`, so a change is published if and only if it is committed.
A subscription's row is locked (`SELECT ... FOR UPDATE`) before its history is read for a change,
so two changes of one subscription never interleave.

Published plan versions and add-ons are written once; the database refuses to update or delete
them (triggers of migration 0004). Publishing the same content again is a no-op; other content
under a published key is refused with the key named.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, text

from metergate.domain.catalog import FeatureDefinition, PlanVersion
from metergate.domain.records import (
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    Pricing,
    ResetPeriod,
    key_part,
    snapshot_key,
    utc_millis,
)
from metergate.domain.subscriptions import (
    AddOn,
    History,
    PriceOverrides,
    PublishedPlan,
    SubscriptionVersion,
    snapshot_at,
)
from metergate.errors import SubscriptionError

SNAPSHOTS_TOPIC = "entitlements.snapshots"

#: `SubscriptionError.reason` of what names something that does not exist, and of what exists already
#: with other content (the admin API answers them 404 and 409; any other SubscriptionError is a 400)
NOT_FOUND = "not_found"
CONFLICT = "conflict"


# ---------------------------------------------------------------------------------------------
# (de)serialisation: decimals as text, never floats


def _features_json(features: Mapping[str, FeatureEntitlement]) -> str:
    return json.dumps({k: f.model_dump(mode="json") for k, f in sorted(features.items())}, sort_keys=True)


def _features_of(value: Mapping[str, Any]) -> dict[str, FeatureEntitlement]:
    return {k: FeatureEntitlement.model_validate(v) for k, v in value.items()}


def _overrides_of(value: Mapping[str, Any]) -> PriceOverrides:
    return PriceOverrides(
        base_fee=None if value.get("base_fee") is None else Decimal(value["base_fee"]),
        pricing={k: Pricing.model_validate(v) for k, v in (value.get("pricing") or {}).items()},
        add_on_fees={k: Decimal(v) for k, v in (value.get("add_on_fees") or {}).items()},
    )


def _variables_of(plan: PublishedPlan, value: Mapping[str, str]) -> dict[str, Decimal | str]:
    found: dict[str, Decimal | str] = {}
    for path, raw in value.items():
        feature = plan.terms.features.get(path.split(".", 1)[0])
        found[path] = raw if feature is not None and feature.kind is FeatureKind.CONFIG else Decimal(raw)
    return found


# ---------------------------------------------------------------------------------------------
# catalog


def publish_feature(conn: Connection, feature: FeatureDefinition, *, who: str, now: datetime) -> bool:
    """Record a feature definition (audited); True when new. A different definition under its key
    is refused."""
    row = conn.execute(
        text("SELECT kind, meter FROM features WHERE feature_key = :k"), {"k": feature.feature}
    ).first()
    if row is not None:
        if (row.kind, row.meter) != (feature.kind.value, feature.meter):
            raise SubscriptionError(
                f"features.{feature.feature}: already defined as {row.kind}"
                + (f" on meter {row.meter}" if row.meter else "")
                + f", got {feature.kind.value}: a feature's kind and meter never change",
                field=f"features.{feature.feature}",
                reason=CONFLICT,
            )
        return False
    conn.execute(
        text("INSERT INTO features (feature_key, kind, meter, description) VALUES (:k, :kind, :meter, :d)"),
        {"k": feature.feature, "kind": feature.kind.value, "meter": feature.meter, "d": feature.description},
    )
    audit(
        conn,
        who=who,
        now=now,
        action="publish",
        entity="feature",
        entity_id=feature.feature,
        before=None,
        after={"kind": feature.kind.value, "meter": feature.meter, "description": feature.description},
    )
    return True


def publish_add_on(conn: Connection, add_on: AddOn, *, who: str, now: datetime) -> bool:
    """Publish an add-on once; True when new, False when the same one was published before."""
    features = _features_json(add_on.features)
    row = conn.execute(
        text("SELECT currency, fee, features, max_quantity FROM add_ons WHERE add_on_key = :k"),
        {"k": add_on.key},
    ).first()
    if row is not None:
        same = (row.currency, row.fee, json.dumps(row.features, sort_keys=True), row.max_quantity) == (
            add_on.currency,
            add_on.fee,
            features,
            add_on.max_quantity,
        )
        if not same:
            raise SubscriptionError(
                f"add_ons.{add_on.key}: published already with other terms; published add-ons are "
                "never edited: publish it under a new key",
                field=f"add_ons.{add_on.key}",
                reason=CONFLICT,
            )
        return False
    conn.execute(
        text(
            "INSERT INTO add_ons (add_on_key, name, currency, fee, features, max_quantity, published_at, "
            "published_by) VALUES (:k, :name, :currency, :fee, CAST(:features AS jsonb), :max, :now, :who)"
        ),
        {
            "k": add_on.key,
            "name": add_on.name,
            "currency": add_on.currency,
            "fee": add_on.fee,
            "features": features,
            "max": add_on.max_quantity,
            "now": now,
            "who": who,
        },
    )
    audit(
        conn,
        who=who,
        now=now,
        action="publish",
        entity="add_on",
        entity_id=add_on.key,
        before=None,
        after={"currency": add_on.currency, "fee": str(add_on.fee), "features": json.loads(features)},
    )
    return True


def publish_plan_version(
    conn: Connection,
    plan: PublishedPlan,
    *,
    who: str,
    now: datetime,
    name: str | None = None,
    product: str | None = None,
) -> bool:
    """Publish a plan version once (its add-ons must be published); True when new.

    The same content again is a no-op; other content under a published (plan, version) is refused:
    published versions are never edited.
    """
    terms = plan.terms
    if product is not None:
        conn.execute(
            text("INSERT INTO products (product_key) VALUES (:p) ON CONFLICT DO NOTHING"), {"p": product}
        )
    conn.execute(
        text("INSERT INTO plans (plan_key, product_key, name) VALUES (:k, :p, :n) ON CONFLICT DO NOTHING"),
        {"k": terms.plan, "p": product, "n": name},
    )
    content = {
        "currency": terms.currency,
        "base_fee": str(terms.base_fee),
        "reset_period": terms.reset_period.value,
        "features": json.loads(_features_json(terms.features)),
        "variable": sorted(plan.variable),
        "add_ons": sorted(plan.add_ons),
    }
    row = conn.execute(
        text(
            "SELECT currency, base_fee, reset_period, features, variable, add_ons FROM plan_versions "
            "WHERE plan_key = :k AND version = :v"
        ),
        {"k": terms.plan, "v": terms.version},
    ).first()
    if row is not None:
        stored = {
            "currency": row.currency,
            "base_fee": str(row.base_fee),
            "reset_period": row.reset_period,
            "features": row.features,
            "variable": row.variable,
            "add_ons": row.add_ons,
        }
        if _canonical(stored) != _canonical(content):
            latest = conn.execute(
                text("SELECT max(version) FROM plan_versions WHERE plan_key = :k"), {"k": terms.plan}
            ).scalar_one()
            raise SubscriptionError(
                f"plans.{terms.plan}.versions.{terms.version}: published already with other terms; "
                f"published versions are never edited: publish version {latest + 1}",
                field=f"plans.{terms.plan}.versions.{terms.version}",
                reason=CONFLICT,
            )
        return False
    for add_on in plan.add_ons.values():
        publish_add_on(conn, add_on, who=who, now=now)
    conn.execute(
        text(
            "INSERT INTO plan_versions (plan_key, version, currency, base_fee, reset_period, features, "
            "variable, add_ons, published_at, published_by) VALUES (:k, :v, :currency, :fee, :reset, "
            "CAST(:features AS jsonb), CAST(:variable AS jsonb), CAST(:add_ons AS jsonb), :now, :who)"
        ),
        {
            "k": terms.plan,
            "v": terms.version,
            "currency": terms.currency,
            "fee": terms.base_fee,
            "reset": terms.reset_period.value,
            "features": json.dumps(content["features"]),
            "variable": json.dumps(content["variable"]),
            "add_ons": json.dumps(content["add_ons"]),
            "now": now,
            "who": who,
        },
    )
    audit(
        conn,
        who=who,
        now=now,
        action="publish",
        entity="plan_version",
        entity_id=f"{terms.plan}:{terms.version}",
        before=None,
        after=content,
    )
    return True


def _canonical(value: Any) -> str:
    def norm(item: Any) -> Any:
        if isinstance(item, dict):
            return {k: norm(v) for k, v in item.items()}
        if isinstance(item, list):
            return [norm(v) for v in item]
        if isinstance(item, str):
            try:
                number = Decimal(item)
            except ArithmeticError:
                return item
            return format(number.normalize(), "f") if number.is_finite() else item
        return item

    return json.dumps(norm(value), sort_keys=True)


def load_add_on(conn: Connection, key: str) -> AddOn | None:
    row = conn.execute(text("SELECT * FROM add_ons WHERE add_on_key = :k"), {"k": key}).first()
    if row is None:
        return None
    return AddOn(
        key=row.add_on_key,
        currency=row.currency,
        fee=row.fee,
        features=_features_of(row.features),
        name=row.name,
        max_quantity=row.max_quantity,
    )


def load_plan_version(conn: Connection, plan: str, version: int | None = None) -> PublishedPlan | None:
    """A published plan version (the latest when `version` is None), or None."""
    if version is None:
        row = conn.execute(
            text("SELECT * FROM plan_versions WHERE plan_key = :k ORDER BY version DESC LIMIT 1"), {"k": plan}
        ).first()
    else:
        row = conn.execute(
            text("SELECT * FROM plan_versions WHERE plan_key = :k AND version = :v"),
            {"k": plan, "v": version},
        ).first()
    if row is None:
        return None
    add_ons: dict[str, AddOn] = {}
    for key in row.add_ons:
        add_on = load_add_on(conn, key)
        if add_on is not None:
            add_ons[key] = add_on
    return PublishedPlan(
        PlanVersion(
            plan=row.plan_key,
            version=row.version,
            currency=row.currency,
            base_fee=row.base_fee,
            reset_period=ResetPeriod(row.reset_period),
            features=_features_of(row.features),
        ),
        variable=frozenset(row.variable),
        add_ons=add_ons,
    )


def plan_versions(conn: Connection, plan: str) -> list[int]:
    return list(
        conn.execute(
            text("SELECT version FROM plan_versions WHERE plan_key = :k ORDER BY 1"), {"k": plan}
        ).scalars()
    )


@dataclass(frozen=True)
class PlanListing:
    plan: str
    name: str | None
    product: str | None
    versions: tuple[int, ...]


def list_plans(conn: Connection) -> list[PlanListing]:
    """Every plan with its published version numbers, by key."""
    rows = conn.execute(
        text(
            "SELECT p.plan_key, p.name, p.product_key, coalesce(array_agg(v.version ORDER BY v.version) "
            "FILTER (WHERE v.version IS NOT NULL), '{}') AS versions FROM plans p LEFT JOIN plan_versions v "
            "USING (plan_key) GROUP BY p.plan_key, p.name, p.product_key ORDER BY p.plan_key"
        )
    ).all()
    return [PlanListing(r.plan_key, r.name, r.product_key, tuple(r.versions)) for r in rows]


def list_add_ons(conn: Connection) -> list[AddOn]:
    keys = conn.execute(text("SELECT add_on_key FROM add_ons ORDER BY 1")).scalars().all()
    return [found for key in keys if (found := load_add_on(conn, key)) is not None]


# ---------------------------------------------------------------------------------------------
# customers


@dataclass(frozen=True)
class Customer:
    customer_id: str
    name: str | None
    created_at: datetime
    created_by: str


def create_customer(conn: Connection, customer_id: str, *, name: str | None, who: str, now: datetime) -> bool:
    """Record a customer; True when new, False when it exists with the same name (else refused)."""
    existing = get_customer(conn, customer_id)
    if existing is not None:
        if existing.name != name:
            raise SubscriptionError(
                f"customer_id: {customer_id!r} exists already (name {existing.name!r})",
                field="customer_id",
                reason=CONFLICT,
            )
        return False
    conn.execute(
        text("INSERT INTO customers (customer_id, name, created_at, created_by) VALUES (:c, :n, :now, :who)"),
        {"c": customer_id, "n": name, "now": now, "who": who},
    )
    audit(
        conn,
        who=who,
        now=now,
        action="create",
        entity="customer",
        entity_id=customer_id,
        before=None,
        after={"customer_id": customer_id, "name": name},
    )
    return True


def get_customer(conn: Connection, customer_id: str) -> Customer | None:
    row = conn.execute(
        text("SELECT customer_id, name, created_at, created_by FROM customers WHERE customer_id = :c"),
        {"c": customer_id},
    ).first()
    return None if row is None else Customer(row.customer_id, row.name, row.created_at, row.created_by)


def subscriptions_of(conn: Connection, customer_id: str) -> list[str]:
    return list(
        conn.execute(
            text("SELECT subscription_id FROM subscriptions WHERE customer_id = :c ORDER BY created_at, 1"),
            {"c": customer_id},
        ).scalars()
    )


# ---------------------------------------------------------------------------------------------
# subscriptions


def load_history(conn: Connection, subscription_id: str, *, for_update: bool = False) -> History | None:
    """A subscription's versions in order (locked for a change when `for_update`), or None."""
    head = conn.execute(
        text(
            "SELECT customer_id, anchor, reset_period FROM subscriptions WHERE subscription_id = :s"
            + (" FOR UPDATE" if for_update else "")
        ),
        {"s": subscription_id},
    ).first()
    if head is None:
        return None
    rows = conn.execute(
        text("SELECT * FROM subscription_versions WHERE subscription_id = :s ORDER BY number"),
        {"s": subscription_id},
    ).all()
    plans: dict[tuple[str, int], PublishedPlan] = {}
    versions: list[SubscriptionVersion] = []
    for row in rows:
        key = (row.plan_key, row.plan_version)
        if key not in plans:
            found = load_plan_version(conn, *key)
            if found is None:  # the foreign key makes this impossible
                raise LookupError(f"plan version {key} of {subscription_id} is missing")
            plans[key] = found
        plan = plans[key]
        versions.append(
            SubscriptionVersion(
                subscription_id=subscription_id,
                customer_id=head.customer_id,
                number=row.number,
                plan=plan,
                effective_from=utc_millis(row.effective_from),
                effective_to=None if row.effective_to is None else utc_millis(row.effective_to),
                anchor=utc_millis(head.anchor),
                reset_period=ResetPeriod(head.reset_period),
                add_ons=dict(row.add_ons),
                variables=_variables_of(plan, row.variables),
                overrides=_overrides_of(row.overrides),
                change=row.change,
            )
        )
    return History(tuple(versions)) if versions else None


def save_history(
    conn: Connection,
    before: History | None,
    after: History,
    *,
    action: str,
    who: str,
    now: datetime,
) -> list[int]:
    """Write `after` (versions, one audit row, one outbox row) in the caller's transaction.

    Returns the outbox ids. `before` must be what `load_history(..., for_update=True)` returned.
    """
    first = after.versions[0]
    if before is None:
        conn.execute(
            text(
                "INSERT INTO subscriptions (subscription_id, customer_id, anchor, reset_period, created_at, "
                "updated_at) VALUES (:s, :c, :anchor, :reset, :now, :now)"
            ),
            {
                "s": first.subscription_id,
                "c": first.customer_id,
                "anchor": first.anchor,
                "reset": first.reset_period.value,
                "now": now,
            },
        )
    else:
        conn.execute(
            text("UPDATE subscriptions SET updated_at = :now WHERE subscription_id = :s"),
            {"s": first.subscription_id, "now": now},
        )
    numbers = [v.number for v in after.versions]
    conn.execute(
        text("DELETE FROM subscription_versions WHERE subscription_id = :s AND NOT (number = ANY(:n))"),
        {"s": first.subscription_id, "n": numbers},
    )
    old = {v.number: v.as_dict() for v in (before.versions if before else ())}
    for version in after.versions:
        if old.get(version.number) == version.as_dict():
            continue
        conn.execute(
            text(
                "INSERT INTO subscription_versions (subscription_id, number, plan_key, plan_version, "
                "effective_from, effective_to, add_ons, variables, overrides, change, recorded_at) VALUES "
                "(:s, :n, :plan, :pv, :f, :t, CAST(:add_ons AS jsonb), CAST(:variables AS jsonb), "
                "CAST(:overrides AS jsonb), :change, :now) ON CONFLICT (subscription_id, number) DO UPDATE SET "
                "plan_key = EXCLUDED.plan_key, plan_version = EXCLUDED.plan_version, "
                "effective_from = EXCLUDED.effective_from, effective_to = EXCLUDED.effective_to, "
                "add_ons = EXCLUDED.add_ons, variables = EXCLUDED.variables, overrides = EXCLUDED.overrides, "
                "change = EXCLUDED.change, recorded_at = EXCLUDED.recorded_at"
            ),
            {
                "s": version.subscription_id,
                "n": version.number,
                "plan": version.plan.plan,
                "pv": version.plan.version,
                "f": version.effective_from,
                "t": version.effective_to,
                "add_ons": json.dumps(dict(version.add_ons)),
                "variables": json.dumps({k: str(v) for k, v in version.variables.items()}),
                "overrides": json.dumps(version.overrides.as_dict()),
                "change": version.change,
                "now": now,
            },
        )
    audit(
        conn,
        who=who,
        now=now,
        action=action,
        entity="subscription",
        entity_id=first.subscription_id,
        before=None if before is None else [v.as_dict() for v in before.versions],
        after=[v.as_dict() for v in after.versions],
    )
    return enqueue_snapshots(conn, after, now=now)


def enqueue_snapshots(conn: Connection, history: History, *, now: datetime) -> list[int]:
    """Outbox rows of a changed subscription: one per version not over by `now`, each holding the
    resolved snapshot with its validity interval, available when the version takes effect; plus,
    for a cancellation, a snapshot without subscription available at the end. Pending rows of
    earlier changes of the subscription are superseded (a scheduled change that was amended or
    unscheduled is never published).

    The relay stamps each snapshot's `version` when it publishes it (`stamp_version`); the payload
    carries the row id until then. Returns the ids, in order.
    """
    first = history.versions[0]
    rows: list[tuple[datetime, EntitlementSnapshot]] = []
    ids: list[int] = []
    for version in history.versions:
        if version.effective_to is not None and version.effective_to <= now:
            continue  # over: its terms were published when they were in force
        outbox_id = _next_outbox_id(conn)
        snapshot = snapshot_at(history, version.effective_from, version=outbox_id, updated_at=now)
        assert snapshot is not None  # a version is in force at its own start
        valid = snapshot.model_copy(
            update={"valid_from": version.effective_from, "valid_to": version.effective_to}
        )
        ids.append(outbox_id)
        rows.append((max(now, version.effective_from), valid))
    if history.end is not None:
        outbox_id = _next_outbox_id(conn)
        ended = EntitlementSnapshot(
            customer_id=first.customer_id,
            version=outbox_id,
            updated_at=now,
            valid_from=history.end,
        )
        ids.append(outbox_id)
        rows.append((max(now, history.end), ended))
    conn.execute(
        text(
            "UPDATE catalog_outbox SET superseded_by = :by WHERE subscription_id = :s "
            "AND published_at IS NULL AND superseded_by IS NULL"
        ),
        {"by": ids[0] if ids else _next_outbox_id(conn), "s": first.subscription_id},
    )
    for outbox_id, (available_at, snapshot) in zip(ids, rows, strict=True):
        conn.execute(
            text(
                "INSERT INTO catalog_outbox (outbox_id, created_at, topic, message_key, subscription_id, "
                "payload, available_at) OVERRIDING SYSTEM VALUE VALUES (:id, :now, :topic, :key, :s, "
                "CAST(:payload AS jsonb), :available)"
            ),
            {
                "id": outbox_id,
                "now": now,
                "topic": SNAPSHOTS_TOPIC,
                "key": snapshot_key(snapshot),
                "s": first.subscription_id,
                "payload": json.dumps(snapshot.model_dump(mode="json")),
                "available": available_at,
            },
        )
    return ids


def _next_outbox_id(conn: Connection) -> int:
    return int(
        conn.execute(
            text("SELECT nextval(pg_get_serial_sequence('catalog_outbox', 'outbox_id'))")
        ).scalar_one()
    )


@dataclass(frozen=True)
class PendingSnapshot:
    outbox_id: int
    topic: str
    key: str
    snapshot: EntitlementSnapshot


def due_snapshots(conn: Connection, *, now: datetime, limit: int = 500) -> list[PendingSnapshot]:
    """Outbox rows due for publication (available, not superseded, not published), oldest first,
    locked so two relays never take the same row (`FOR UPDATE SKIP LOCKED`)."""
    rows = conn.execute(
        text(
            "SELECT outbox_id, topic, message_key, payload FROM catalog_outbox WHERE published_at IS NULL "
            "AND superseded_by IS NULL AND available_at <= :now ORDER BY outbox_id LIMIT :limit "
            "FOR UPDATE SKIP LOCKED"
        ),
        {"now": now, "limit": limit},
    ).all()
    return [
        PendingSnapshot(
            row.outbox_id, row.topic, row.message_key, EntitlementSnapshot.model_validate(row.payload)
        )
        for row in rows
    ]


def stamp_version(conn: Connection, customer_id: str, *, now: datetime) -> int:
    """The version of the next snapshot published for `customer_id`: the publication time in
    milliseconds (what `metergate catalog apply` uses, so the two never go backwards against each
    other), and more than any version published for the customer before, under any of its keys
    (`records.snapshot_key`: the customer id, or the customer and a validity start)."""
    previous = conn.execute(
        text(
            "SELECT max(published_version) FROM catalog_outbox "
            "WHERE message_key = :c OR starts_with(message_key, :prefix)"
        ),
        {"c": customer_id, "prefix": f"{key_part(customer_id)}|"},
    ).scalar_one()
    millis = int(now.timestamp() * 1000)
    return millis if previous is None or millis > previous else int(previous) + 1


def mark_published(conn: Connection, versions: Mapping[int, int], *, now: datetime) -> None:
    """Record outbox rows as published: outbox id -> the snapshot version stamped on it."""
    for outbox_id, version in versions.items():
        conn.execute(
            text(
                "UPDATE catalog_outbox SET published_at = :now, published_version = :v WHERE outbox_id = :id"
            ),
            {"now": now, "v": version, "id": outbox_id},
        )


def subscriptions_on(conn: Connection, plan: str, version: int) -> list[str]:
    """Subscriptions whose newest version pins (plan, version): the ones a migration moves."""
    return list(
        conn.execute(
            text(
                "SELECT v.subscription_id FROM subscription_versions v WHERE v.plan_key = :p AND "
                "v.plan_version = :v AND v.number = (SELECT max(number) FROM subscription_versions w "
                "WHERE w.subscription_id = v.subscription_id) ORDER BY 1"
            ),
            {"p": plan, "v": version},
        ).scalars()
    )


def audit(
    conn: Connection,
    *,
    who: str,
    now: datetime,
    action: str,
    entity: str,
    entity_id: str,
    before: Any,
    after: Any,
) -> None:
    conn.execute(
        text(
            "INSERT INTO audit_log (at, who, action, entity, entity_id, before, after) VALUES "
            "(:at, :who, :action, :entity, :id, CAST(:before AS jsonb), CAST(:after AS jsonb))"
        ),
        {
            "at": now,
            "who": who,
            "action": action,
            "entity": entity,
            "id": entity_id,
            "before": None if before is None else json.dumps(before),
            "after": None if after is None else json.dumps(after),
        },
    )


def audit_trail(conn: Connection, entity: str, entity_id: str) -> Sequence[Any]:
    """The audit rows of one entity (at, who, action, entity, entity_id, before, after), oldest first."""
    return conn.execute(
        text(
            "SELECT at, who, action, entity, entity_id, before, after FROM audit_log WHERE entity = :e "
            "AND entity_id = :i ORDER BY audit_id"
        ),
        {"e": entity, "i": entity_id},
    ).all()


def customer_audit_trail(conn: Connection, customer_id: str) -> Sequence[Any]:
    """The audit rows of a customer and of each of its subscriptions, oldest first."""
    return conn.execute(
        text(
            "SELECT at, who, action, entity, entity_id, before, after FROM audit_log WHERE "
            "(entity = 'customer' AND entity_id = :c) OR (entity = 'subscription' AND entity_id IN "
            "(SELECT subscription_id FROM subscriptions WHERE customer_id = :c)) ORDER BY audit_id"
        ),
        {"c": customer_id},
    ).all()


# ---------------------------------------------------------------------------------------------
# what `metergate catalog plan` compares a file with


def load_features(conn: Connection) -> dict[str, FeatureDefinition]:
    return {
        row.feature_key: FeatureDefinition(
            feature=row.feature_key, kind=FeatureKind(row.kind), meter=row.meter, description=row.description
        )
        for row in conn.execute(text("SELECT feature_key, kind, meter, description FROM features"))
    }


def published_terms(conn: Connection) -> dict[tuple[str, int], PublishedPlan]:
    """Every published plan version with the add-ons it allows and its negotiated paths."""
    found: dict[tuple[str, int], PublishedPlan] = {}
    for row in conn.execute(text("SELECT plan_key, version FROM plan_versions ORDER BY 1, 2")).all():
        plan = load_plan_version(conn, row.plan_key, row.version)
        if plan is not None:
            found[(row.plan_key, row.version)] = plan
    return found


def plans_in_force(conn: Connection, now: datetime) -> dict[str, tuple[str, str, int]]:
    """customer -> (subscription id, plan, version) of the version in force at `now` (the first
    subscription of the customer when it has several)."""
    rows = conn.execute(
        text(
            "SELECT s.customer_id, v.subscription_id, v.plan_key, v.plan_version FROM subscriptions s "
            "JOIN subscription_versions v USING (subscription_id) WHERE v.effective_from <= :now AND "
            "(v.effective_to IS NULL OR v.effective_to > :now) ORDER BY s.created_at DESC, s.subscription_id DESC"
        ),
        {"now": now},
    ).all()
    return {row.customer_id: (row.subscription_id, row.plan_key, row.plan_version) for row in rows}
