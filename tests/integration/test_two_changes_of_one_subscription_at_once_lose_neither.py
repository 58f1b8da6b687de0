"""Two people changing one subscription at the same moment lose neither change: the second waits
for the first's lock on the subscription (seen in pg_stat_activity, not assumed after a sleep),
then applies its change on top of the first's. And migration 0004 goes down and up again."""

from __future__ import annotations

import importlib
import threading
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from alembic import command

from metergate import provisioning
from metergate.db import subscription_store as store
from metergate.db.engine import make_engine
from metergate.db.migrate import alembic_config, current, upgrade
from metergate.domain.catalog import PlanVersion
from metergate.domain.records import FeatureEntitlement, FeatureKind, ResetPeriod
from metergate.domain.subscriptions import AddOn, PriceOverrides, PublishedPlan, When, set_add_on
from metergate.testing.waiting import wait_until

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 10, tzinfo=UTC)
SEATS = FeatureEntitlement(feature="seats", kind=FeatureKind.METERED, meter="active_users", included=D(10))
EXTRA = {key: AddOn(key=key, currency="USD", fee=D(5), features={"seats": SEATS}) for key in ("a", "b")}
GROWTH = PublishedPlan(
    PlanVersion("growth", 1, "USD", D(100), ResetPeriod.MONTHLY, {"seats": SEATS}), add_ons=EXTRA
)


def a_backend_waits_for_a_lock(engine) -> bool:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return bool(
            conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ).scalar()
        )


def test_two_changes_of_one_subscription_at_once_lose_neither(database_url, db_schema):
    engine = make_engine(database_url, db_schema)
    try:
        with engine.begin() as conn:
            store.publish_plan_version(conn, GROWTH, who="test", now=NOW)
        provisioning.create_customer(engine, "acme", name=None, who="test", now=NOW)
        provisioning.create_subscription(
            engine,
            subscription_id="acme",
            customer_id="acme",
            plan="growth",
            version=None,
            start=NOW,
            anchor=None,
            reset_period=None,
            add_ons={},
            variables={},
            overrides=PriceOverrides(),
            who="test",
            now=NOW,
        )
        errors: list[BaseException] = []

        def second_person() -> None:
            try:
                provisioning.change_subscription(
                    engine,
                    "acme",
                    provisioning.Change(add_ons={"b": 2}),
                    at=When.IMMEDIATELY,
                    who="bob",
                    now=NOW,
                )
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        with engine.begin() as conn:  # the first person's change, holding the subscription's lock
            before = store.load_history(conn, "acme", for_update=True)
            assert before is not None
            bob = threading.Thread(target=second_person)
            bob.start()
            wait_until(
                lambda: a_backend_waits_for_a_lock(engine),
                "the second change to wait for the lock",
                timeout_s=30,
            )
            store.save_history(
                conn,
                before,
                set_add_on(before, "a", 1, at=NOW, now=NOW),
                action="change",
                who="alice",
                now=NOW,
            )
        bob.join(30)
        assert not bob.is_alive() and errors == []
        history = provisioning.show_subscription(engine, "acme")
        assert [dict(v.add_ons) for v in history.versions] == [{"a": 1, "b": 2}]  # both, in one version
        with engine.begin() as conn:
            trail = store.audit_trail(conn, "subscription", "acme")
        assert [(row.who, row.after[0]["add_ons"]) for row in trail] == [
            ("test", {}),
            ("alice", {"a": 1}),
            ("bob", {"a": 1, "b": 2}),
        ]
    finally:
        engine.dispose()


def test_migration_0004_goes_down_and_up_again(database_url, db_schema):
    assert current(database_url, db_schema) == "0004_subscriptions"
    previous = importlib.import_module("metergate.db.migrations.versions.0004_subscriptions").down_revision
    command.downgrade(alembic_config(database_url, db_schema), "-1")
    assert current(database_url, db_schema) == previous
    upgrade(database_url, db_schema)
    assert current(database_url, db_schema) == "0004_subscriptions"
