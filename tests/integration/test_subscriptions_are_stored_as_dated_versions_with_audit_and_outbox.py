"""The catalog and subscriptions in real PostgreSQL: a published plan version is never edited (the
database refuses it too), a subscription's history reads back as it was written, and every change
leaves one audit row (who, when, before, after) and outbox rows holding the terms with their validity, published when they take effect."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from sqlalchemy import exc, text

from metergate.db import subscription_store as store
from metergate.db.engine import make_engine
from metergate.domain.catalog import PlanVersion
from metergate.domain.records import (
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    Pricing,
    PricingModel,
    ResetPeriod,
)
from metergate.domain.subscriptions import (
    AddOn,
    PriceOverrides,
    PublishedPlan,
    When,
    cancel,
    change_plan,
    create,
    set_add_on,
)
from metergate.errors import SubscriptionError

pytestmark = pytest.mark.integration


def at(day: int, month: int = 11) -> datetime:
    return datetime(2026, month, day, tzinfo=UTC)


CALLS = FeatureEntitlement(
    feature="api_calls",
    kind=FeatureKind.METERED,
    meter="api_calls",
    included=D(10_000_000),
    pricing=Pricing(model=PricingModel.PER_UNIT, unit_price=D("0.0002")),
)
EXTRA = AddOn(
    key="extra_calls",
    currency="USD",
    fee=D("100.00"),
    features={"api_calls": CALLS.model_copy(update={"included": D(5_000_000)})},
)


def offer(key: str, fee: str, version: int = 1, **kw) -> PublishedPlan:  # type: ignore[no-untyped-def]
    return PublishedPlan(
        PlanVersion(key, version, "USD", D(fee), ResetPeriod.MONTHLY, {"api_calls": CALLS}), **kw
    )


def test_subscriptions_are_stored_as_dated_versions_with_audit_and_outbox(database_url, db_schema):
    engine = make_engine(database_url, db_schema)
    growth = offer("growth", "1000.00", add_ons={"extra_calls": EXTRA})
    scale = offer("scale", "2000.00")
    try:
        with engine.begin() as conn:
            assert store.publish_plan_version(conn, growth, who="cli:ops", now=at(1)) is True
            assert store.publish_plan_version(conn, growth, who="cli:ops", now=at(1)) is False  # same: no-op
            assert store.publish_plan_version(conn, scale, who="cli:ops", now=at(1)) is True
            with pytest.raises(SubscriptionError) as edited:
                store.publish_plan_version(conn, offer("growth", "900.00"), who="cli:ops", now=at(2))
            assert str(edited.value) == (
                "plans.growth.versions.1: published already with other terms; published versions are "
                "never edited: publish version 2"
            )
            assert store.create_customer(conn, "acme", name="Acme", who="cli:ops", now=at(1)) is True
        with engine.begin() as conn, pytest.raises(exc.IntegrityError, match="immutable"):
            conn.execute(text("UPDATE plan_versions SET base_fee = 1 WHERE plan_key = 'growth'"))

        with engine.begin() as conn:
            loaded = store.load_plan_version(conn, "growth")
            assert loaded is not None and loaded.terms == growth.terms and loaded.add_ons == growth.add_ons
            history = create(
                subscription_id="sub-1",
                customer_id="acme",
                plan=loaded,
                start=at(1),
                now=at(1),
                add_ons={"extra_calls": 2},
                overrides=PriceOverrides(add_on_fees={"extra_calls": D("80.00")}),
            )
            first_outbox = store.save_history(conn, None, history, action="create", who="cli:ops", now=at(1))

        with engine.begin() as conn:
            before = store.load_history(conn, "sub-1", for_update=True)
            assert before == history
            scale_loaded = store.load_plan_version(conn, "scale", 1)
            assert scale_loaded is not None
            with pytest.raises(SubscriptionError, match=r"^add_ons.extra_calls: scale v1 does not allow"):
                change_plan(before, scale_loaded, at=When.IMMEDIATELY, now=at(15))
            upgraded = change_plan(
                set_add_on(before, "extra_calls", 0, at=at(15), now=at(15)),
                scale_loaded,
                at=at(15),
                now=at(15),
            )
            second_outbox = store.save_history(
                conn, before, upgraded, action="change", who="cli:sam", now=at(15)
            )

        with engine.begin() as conn:
            again = store.load_history(conn, "sub-1")
            assert again == upgraded
            assert [
                (v.plan.plan, v.effective_from, v.effective_to, dict(v.add_ons)) for v in again.versions
            ] == [
                ("growth", at(1), at(15), {"extra_calls": 2}),
                ("scale", at(15), None, {}),
            ]
            trail = store.audit_trail(conn, "subscription", "sub-1")
            assert [(row.who, row.action, row.at) for row in trail] == [
                ("cli:ops", "create", at(1)),
                ("cli:sam", "change", at(15)),
            ]
            assert trail[1].before == [v.as_dict() for v in history.versions]
            assert trail[1].after == [v.as_dict() for v in upgraded.versions]
            outbox = conn.execute(
                text(
                    "SELECT outbox_id, message_key, subscription_id, available_at, superseded_by, payload "
                    "FROM catalog_outbox ORDER BY outbox_id"
                )
            ).all()
            # one row per version not over at the change; the create's row, never published, is
            # superseded by the change's; each keyed by the customer and its terms' start, so a
            # compacted topic keeps every dated version
            assert [(r.outbox_id, r.message_key, r.available_at, r.superseded_by) for r in outbox] == [
                (first_outbox[0], f"acme|{at(1).isoformat()}", at(1), second_outbox[0]),
                (second_outbox[0], f"acme|{at(15).isoformat()}", at(15), None),
            ]
            growth_terms, scale_terms = (EntitlementSnapshot.model_validate(r.payload) for r in outbox)
            # growth 1000.00 + 2 x 80.00 (the override) per period; scale 2000.00
            assert (growth_terms.plan_key, growth_terms.base_fee, growth_terms.valid_from) == (
                "growth",
                D(1160),
                at(1),
            )
            assert (scale_terms.plan_key, scale_terms.base_fee) == ("scale", D(2000))
            assert (scale_terms.valid_from, scale_terms.valid_to, scale_terms.version) == (
                at(15),
                None,
                second_outbox[0],
            )
            assert [p.snapshot for p in store.due_snapshots(conn, now=at(15))] == [scale_terms]
            store.mark_published(conn, {second_outbox[0]: 1}, now=at(15))
            assert store.due_snapshots(conn, now=at(15)) == []

        with engine.begin() as conn:  # cancelled at period end: the end is published when it comes
            before = store.load_history(conn, "sub-1", for_update=True)
            assert before is not None
            ids = store.save_history(
                conn,
                before,
                cancel(before, at=When.PERIOD_END, now=at(20)),
                action="cancel",
                who="cli:sam",
                now=at(20),
            )
            assert len(ids) == 2
            due_now = store.due_snapshots(conn, now=at(20))
            assert [(p.snapshot.plan_key, p.snapshot.valid_to) for p in due_now] == [
                ("scale", at(1, month=12))
            ]
            store.mark_published(conn, {p.outbox_id: 2 for p in due_now}, now=at(20))
            assert store.due_snapshots(conn, now=datetime(2026, 11, 30, 23, 59, tzinfo=UTC)) == []
            (ended,) = store.due_snapshots(conn, now=at(1, month=12))
            assert (ended.key, ended.snapshot.subscription_id, ended.snapshot.valid_from) == (
                f"acme|{at(1, month=12).isoformat()}",
                None,
                at(1, month=12),
            )
            assert ended.snapshot.version > due_now[0].snapshot.version
            assert store.subscriptions_on(conn, "scale", 1) == ["sub-1"]
            assert store.subscriptions_on(conn, "growth", 1) == []
            with pytest.raises(SubscriptionError, match=r"^customer_id: 'acme' exists already"):
                store.create_customer(conn, "acme", name="Other", who="cli:ops", now=at(2))
        with engine.begin() as conn, pytest.raises(exc.IntegrityError, match="append-only"):
            conn.execute(text("DELETE FROM audit_log"))
    finally:
        engine.dispose()
