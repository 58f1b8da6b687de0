"""A $2,000/month subscription with no usage at all is still billed its base fee, every month:
provisioned in PostgreSQL, relayed to entitlements.snapshots, billed by a running rating consumer
when the period starts by its clock (injected: the dates are the test's own)."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from metergate import provisioning
from metergate.db.engine import make_engine
from metergate.domain.subscriptions import PriceOverrides
from metergate.testing.waiting import wait_until
from tests.integration.fee_support import Relay, at, fee_lines, invoices, offer, publish
from tests.integration.rating_support import Clock, query, running_consumer, settings

pytestmark = pytest.mark.integration


def test_a_month_without_usage_still_bills_the_base_fee(
    kafka_bootstrap, kafka_config, topics, database_url, db_schema
):
    engine = make_engine(database_url, db_schema)
    relay = Relay(engine, kafka_config, topics)
    try:
        publish(engine, offer("enterprise", "2000.00", 100_000_000, "0.0001"), now=at(1))
        provisioning.create_customer(engine, "acme", name=None, who="sales", now=at(1))
        provisioning.create_subscription(
            engine,
            subscription_id="acme",
            customer_id="acme",
            plan="enterprise",
            version=None,
            start=at(1),  # the anchor: monthly periods from the 1st, 00:00 UTC
            anchor=None,
            reset_period=None,
            add_ons={},
            variables={},
            overrides=PriceOverrides(),
            who="sales",
            now=at(1),
        )
        assert relay(at(1)) == 1
        clock = Clock(at(10))  # inside November; no usage event anywhere
        rating = settings(kafka_bootstrap, topics, database_url, db_schema)
        with running_consumer(rating, clock=clock):
            november = [
                (
                    at(1),
                    "base_fee",
                    "enterprise",
                    D("2000.00"),
                    "rated",
                    "base fee of enterprise v1 for 30/30 days",
                )
            ]
            wait_until(
                lambda: fee_lines(database_url, db_schema) == november,
                "November's base fee",
                timeout_s=60,
                every_s=0.2,
            )
            # one invoice row: 2,000.00, nothing paid from credits, 2,000.00 due, one line
            assert invoices(database_url, db_schema) == [
                ("acme", at(1), D("2000.00"), D("0.00"), D("2000.00"), 1)
            ]
            clock.now = at(3, month=12)  # the clock moves into December: December starts, still no usage
            both = [
                *november,
                (
                    at(1, 12),
                    "base_fee",
                    "enterprise",
                    D("2000.00"),
                    "rated",
                    "base fee of enterprise v1 for 31/31 days",
                ),
            ]
            wait_until(
                lambda: fee_lines(database_url, db_schema) == both,
                "December's base fee too",
                timeout_s=60,
                every_s=0.2,
            )
            assert invoices(database_url, db_schema) == [
                ("acme", at(1), D("2000.00"), D("0.00"), D("2000.00"), 1),
                ("acme", at(1, 12), D("2000.00"), D("0.00"), D("2000.00"), 1),
            ]
        # a restart reads every snapshot again and bills nothing twice: it writes nothing at all
        written = query(database_url, db_schema, "SELECT line_key, updated_at FROM line_items ORDER BY 1")
        with running_consumer(rating, clock=clock) as again:
            wait_until(
                lambda: ("acme", at(1, 12)) in again._fees_done,
                "the restart to look at December",
                timeout_s=60,
                every_s=0.2,
            )
        assert fee_lines(database_url, db_schema, superseded=True) == both
        assert (
            query(database_url, db_schema, "SELECT line_key, updated_at FROM line_items ORDER BY 1")
            == written
        )
    finally:
        relay.close()
        engine.dispose()
