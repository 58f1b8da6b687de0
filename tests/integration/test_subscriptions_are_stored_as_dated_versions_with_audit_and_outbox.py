"""The catalog and subscriptions in real PostgreSQL: a published plan version is never edited (the
database refuses it too), a subscription's history reads back as it was written, and every change
leaves one audit row (who, when, before, after) and one outbox row with the terms' validity."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from sqlalchemy import exc, text

from metergate.db import subscription_store as store
from metergate.db.engine import make_engine
from metergate.domain.catalog import PlanVersion
from metergate.domain.records import FeatureEntitlement, FeatureKind, Pricing, PricingModel, ResetPeriod
from metergate.domain.subscriptions import AddOn, PriceOverrides, PublishedPlan, When, change_plan, create
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
            from metergate.domain.subscriptions import set_add_on

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
                text("SELECT outbox_id, message_key, payload FROM catalog_outbox ORDER BY outbox_id")
            ).all()
            assert [row.outbox_id for row in outbox] == [first_outbox, second_outbox]
            assert second_outbox > first_outbox
            terms = outbox[1].payload["terms"]
            assert [(t["valid_from"], t["valid_to"], t["snapshot"]["plan_key"]) for t in terms] == [
                ("2026-11-01T00:00:00+00:00", "2026-11-15T00:00:00+00:00", "growth"),
                ("2026-11-15T00:00:00+00:00", None, "scale"),
            ]
            # growth 1000.00 + 2 x 80.00 (the override) per period; scale 2000.00
            assert [D(t["snapshot"]["base_fee"]) for t in terms] == [D("1160"), D("2000")]
            assert {t["snapshot"]["version"] for t in terms} == {second_outbox}
            assert store.subscriptions_on(conn, "scale", 1) == ["sub-1"]
            assert store.subscriptions_on(conn, "growth", 1) == []
            with pytest.raises(SubscriptionError, match=r"^customer_id: 'acme' exists already"):
                store.create_customer(conn, "acme", name="Other", who="cli:ops", now=at(2))
        with engine.begin() as conn, pytest.raises(exc.IntegrityError, match="append-only"):
            conn.execute(text("DELETE FROM audit_log"))
    finally:
        engine.dispose()
