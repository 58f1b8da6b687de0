"""Journeys through the real broker and PostgreSQL, from the CLI to the in-process entitlement check:
a custom plan's negotiated limit is what the check enforces, an upgrade raises it without anyone
restarting anything, and a subscription cancelled for a later moment keeps access until that moment
and loses it then, with the relay running and nobody acting after the cancel command."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from click.testing import CliRunner

from metergate.cli.main import main
from metergate.db import subscription_store as store
from metergate.db.engine import make_engine
from metergate.domain.catalog import PlanVersion
from metergate.domain.records import Enforcement, FeatureEntitlement, FeatureKind, ResetPeriod
from metergate.domain.subscriptions import PublishedPlan
from metergate.entitlements import Entitlements, EntitlementsSettings
from metergate.settings import KafkaSettings
from metergate.snapshot_relay import run_relay
from metergate.testing.waiting import wait_until

pytestmark = pytest.mark.integration


def hard_calls(limit: int) -> FeatureEntitlement:
    return FeatureEntitlement(
        feature="api_calls",
        kind=FeatureKind.METERED,
        meter="api_calls",
        limit=D(limit),
        enforcement=Enforcement.HARD,
    )


CUSTOM = PublishedPlan(
    PlanVersion("custom", 1, "USD", D("5000.00"), ResetPeriod.MONTHLY, {"api_calls": hard_calls(1)}),
    variable=frozenset({"api_calls.limit"}),
)
SCALE = PublishedPlan(
    PlanVersion("scale", 1, "USD", D("2000.00"), ResetPeriod.MONTHLY, {"api_calls": hard_calls(500)})
)


def test_a_custom_contract_is_enforced_and_a_cancelled_subscription_loses_access_at_its_time(
    database_url, db_schema, kafka_bootstrap, topics
):
    engine = make_engine(database_url, db_schema)
    with engine.begin() as conn:
        for plan in (CUSTOM, SCALE):
            store.publish_plan_version(conn, plan, who="test", now=datetime.now(UTC))
    env = {
        "METERGATE_DATABASE_URL": database_url,
        "METERGATE_DATABASE_SCHEMA": db_schema,
        "METERGATE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "METERGATE_KAFKA_TOPIC_PREFIX": topics.prefix,
    }
    runner = CliRunner()

    def run(*args: str) -> None:
        result = runner.invoke(main, list(args), env=env)
        assert result.exit_code == 0, result.output

    kafka = KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=topics.prefix)
    stop = threading.Event()
    relay = threading.Thread(
        target=run_relay,
        args=(engine, kafka.client_config(), topics),
        kwargs={"clock": lambda: datetime.now(UTC), "stop": stop, "interval_s": 0.05},
    )
    relay.start()
    entitlements = Entitlements(EntitlementsSettings(kafka=kafka, checkpoint_path=None))
    try:
        assert entitlements.wait_caught_up(60)
        run("customers", "create", "acme")
        run(
            "subscriptions", "create", "--customer", "acme", "--plan", "custom", "--set", "api_calls.limit=50"
        )
        wait_until(
            lambda: entitlements.check("acme", "api_calls", 1).limit == D(50),
            "the contract's limit",
            timeout_s=30,
        )
        assert entitlements.check("acme", "api_calls", 50).has_access
        denied = entitlements.check("acme", "api_calls", 51)
        assert (denied.has_access, denied.reason.value) == (False, "would_exceed")

        run("subscriptions", "change", "acme", "--plan", "scale")
        wait_until(
            lambda: entitlements.check("acme", "api_calls", 1).limit == D(500), "the upgrade", timeout_s=30
        )

        moment = datetime.now(UTC) + timedelta(seconds=2)
        run("subscriptions", "cancel", "acme", "--at", moment.isoformat())
        assert entitlements.check("acme", "api_calls", 1, now=moment - timedelta(milliseconds=1)).has_access
        wait_until(
            lambda: not entitlements.check("acme", "api_calls", 1).has_access,
            "access to end at the moment",
            timeout_s=30,
        )
        ended_at = datetime.now(UTC)
        assert ended_at >= moment  # never before the cancellation time
        after = entitlements.check("acme", "api_calls", 1)
        assert (after.has_access, after.reason.value) == (False, "unknown_feature")
    finally:
        stop.set()
        relay.join(30)
        entitlements.close()
        engine.dispose()
