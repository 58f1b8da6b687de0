"""A change is relayed from PostgreSQL's catalog outbox to entitlements.snapshots on the real broker
when it takes effect: the terms in force now at once, an upgrade scheduled for the period end at
the period end, a cancellation at its moment (a snapshot without subscription: no access), each
with its validity interval and a version above the previous one. The clock is injected."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from metergate import provisioning
from metergate.db import subscription_store as store
from metergate.db.engine import make_engine
from metergate.domain.catalog import PlanVersion
from metergate.domain.metering import millis
from metergate.domain.records import (
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    Pricing,
    PricingModel,
    ResetPeriod,
)
from metergate.domain.subscriptions import PriceOverrides, PublishedPlan, When
from metergate.domain.terms import DatedTerms
from metergate.kafka.producer import make_producer
from metergate.snapshot_relay import relay_once
from metergate.testing.topics import read_topic
from metergate.wire.codec import codec

pytestmark = pytest.mark.integration


def at(day: int, month: int = 11, hour: int = 0) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


def offer(key: str, fee: str, included: int) -> PublishedPlan:
    calls = FeatureEntitlement(
        feature="api_calls",
        kind=FeatureKind.METERED,
        meter="api_calls",
        included=D(included),
        pricing=Pricing(model=PricingModel.PER_UNIT, unit_price=D("0.0002")),
    )
    return PublishedPlan(PlanVersion(key, 1, "USD", D(fee), ResetPeriod.MONTHLY, {"api_calls": calls}))


def test_a_scheduled_upgrade_and_a_cancellation_reach_the_snapshots_topic_when_they_take_effect(
    database_url, db_schema, kafka_config, topics
):
    engine = make_engine(database_url, db_schema)
    producer = make_producer(kafka_config)
    try:
        with engine.begin() as conn:
            for plan in (offer("growth", "1000.00", 10_000_000), offer("scale", "2000.00", 50_000_000)):
                store.publish_plan_version(conn, plan, who="test", now=at(1))
        provisioning.create_customer(engine, "acme", name=None, who="test", now=at(1))
        provisioning.create_subscription(
            engine,
            subscription_id="acme",
            customer_id="acme",
            plan="growth",
            version=None,
            start=at(1),
            anchor=None,
            reset_period=None,
            add_ons={},
            variables={},
            overrides=PriceOverrides(),
            who="test",
            now=at(1),
        )
        provisioning.change_subscription(
            engine, "acme", provisioning.Change(plan="scale"), at=When.PERIOD_END, who="test", now=at(10)
        )
        provisioning.cancel_subscription(engine, "acme", at=at(20, month=12), who="test", now=at(10))

        def relay(moment: datetime) -> list[tuple[str | None, datetime | None, datetime | None]]:
            sent = relay_once(engine, producer, topics, clock=lambda: moment)
            return [(s.plan_key, s.valid_from, s.valid_to) for s in sent]

        assert relay(at(10)) == [("growth", at(1), at(1, month=12))]  # the create's row was superseded
        assert relay(at(10)) == []
        assert relay(datetime(2026, 11, 30, 23, 59, 59, 999000, tzinfo=UTC)) == []
        assert relay(at(1, month=12)) == [("scale", at(1, month=12), at(20, month=12))]
        assert relay(at(20, month=12)) == [(None, at(20, month=12), None)]
        assert relay(at(21, month=12)) == []

        records = read_topic(kafka_config, topics.snapshots, expect=3, idle_s=1.0)
        # each key on its own partition: in publication (version) order
        records.sort(key=lambda record: codec(EntitlementSnapshot).decode(record[1]).version)
        snapshots = [codec(EntitlementSnapshot).decode(value) for _, value, _, _ in records]
        # keyed by the customer and the start of the terms: a compacted topic keeps every version
        starts = (at(1), at(1, month=12), at(20, month=12))
        assert [key for key, _, _, _ in records] == [f"acme|{start.isoformat()}".encode() for start in starts]
        assert [(s.subscription_id, s.plan_key, s.base_fee, s.valid_from, s.valid_to) for s in snapshots] == [
            ("acme", "growth", D(1000), at(1), at(1, month=12)),
            ("acme", "scale", D(2000), at(1, month=12), at(20, month=12)),
            (None, None, D(0), at(20, month=12), None),
        ]
        # the version of each is its publication time in ms: increasing, comparable with catalog apply's
        assert [s.version for s in snapshots] == [
            int(moment.timestamp() * 1000) for moment in (at(10), at(1, month=12), at(20, month=12))
        ]
        # what log compaction keeps (the last record per key) still answers every moment
        compacted = {key: value for key, value, _, _ in records}
        terms = DatedTerms()
        for value in compacted.values():
            terms.remember(codec(EntitlementSnapshot).decode(value))

        def plan_at(moment: datetime) -> str | None:
            found = terms.at("acme", millis(moment))
            return None if found is None else found.plan_key

        assert [plan_at(moment) for moment in (at(5), at(5, month=12), at(25, month=12))] == [
            "growth",
            "scale",
            None,
        ]
    finally:
        producer.flush(10)
        engine.dispose()


def test_subscriptions_publish_relays_what_the_cli_provisioned(database_url, db_schema, kafka_config, topics):
    from click.testing import CliRunner

    from metergate.cli.main import main

    engine = make_engine(database_url, db_schema)
    try:
        with engine.begin() as conn:
            store.publish_plan_version(conn, offer("growth", "1000.00", 10_000_000), who="test", now=at(1))
    finally:
        engine.dispose()
    env = {
        "METERGATE_DATABASE_URL": database_url,
        "METERGATE_DATABASE_SCHEMA": db_schema,
        "METERGATE_KAFKA_BOOTSTRAP": kafka_config["bootstrap.servers"],
        "METERGATE_KAFKA_TOPIC_PREFIX": topics.prefix,
    }
    runner = CliRunner()
    for args in (
        ("customers", "create", "acme"),
        ("subscriptions", "create", "--customer", "acme", "--plan", "growth"),
    ):
        assert runner.invoke(main, list(args), env=env).exit_code == 0
    result = runner.invoke(main, ["subscriptions", "publish"], env=env)
    assert (result.exit_code, result.output) == (0, "published 1 snapshot\n")
    assert runner.invoke(main, ["subscriptions", "publish"], env=env).output == "published 0 snapshots\n"
    (record,) = read_topic(kafka_config, topics.snapshots, expect=1, idle_s=1.0)
    snapshot = codec(EntitlementSnapshot).decode(record[1])
    assert (record[0], snapshot.plan_key, snapshot.valid_to) == (
        f"acme|{snapshot.valid_from.isoformat()}".encode(),
        "growth",
        None,
    )
    assert snapshot.valid_from == snapshot.billing_anchor  # starts now, billed from its start


def test_subscriptions_publish_follow_relays_a_change_and_stops_on_sigterm(
    database_url, db_schema, kafka_config, topics
):
    import os
    import signal
    import subprocess
    import sys

    from metergate.testing.waiting import wait_until

    engine = make_engine(database_url, db_schema)
    env = {
        **os.environ,
        "METERGATE_DATABASE_URL": database_url,
        "METERGATE_DATABASE_SCHEMA": db_schema,
        "METERGATE_KAFKA_BOOTSTRAP": kafka_config["bootstrap.servers"],
        "METERGATE_KAFKA_TOPIC_PREFIX": topics.prefix,
    }
    command = [
        os.path.join(os.path.dirname(sys.executable), "metergate"),
        "subscriptions",
        "publish",
        "--follow",
    ]
    relay = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with engine.begin() as conn:
            store.publish_plan_version(conn, offer("growth", "1000.00", 10_000_000), who="test", now=at(1))
        now = datetime.now(UTC)
        provisioning.create_customer(engine, "acme", name=None, who="test", now=now)
        provisioning.create_subscription(
            engine,
            subscription_id="acme",
            customer_id="acme",
            plan="growth",
            version=None,
            start=None,
            anchor=None,
            reset_period=None,
            add_ons={},
            variables={},
            overrides=PriceOverrides(),
            who="test",
            now=now,
        )

        def published() -> bool:
            with engine.connect() as conn:
                return bool(
                    conn.exec_driver_sql(
                        "SELECT count(*) FROM catalog_outbox WHERE published_at IS NOT NULL"
                    ).scalar()
                )

        wait_until(published, "the running relay to publish the new subscription", timeout_s=60)
        (record,) = read_topic(kafka_config, topics.snapshots, expect=1, idle_s=1.0)
        assert codec(EntitlementSnapshot).decode(record[1]).plan_key == "growth"
        relay.send_signal(signal.SIGTERM)
        out, err = relay.communicate(timeout=30)
        assert (relay.returncode, out, err) == (0, "published 1 snapshot\n", "")
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait(10)
        engine.dispose()
