"""Growth ($1,000/month) upgraded to Scale ($2,000/month) at 00:00 UTC on 15 November 2026, a
30-day month: the whole-month Growth line rating wrote when the month started becomes 14/30 of
Growth and a new 16/30 line of Scale, as the core's README works the example out. Provisioned
through the provisioning use case, relayed by the snapshot relay, billed by a running consumer."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from metergate import provisioning
from metergate.db.engine import make_engine
from metergate.domain.subscriptions import PriceOverrides, When
from metergate.testing.waiting import wait_until
from tests.integration.fee_support import Relay, at, fee_lines, invoices, offer, publish
from tests.integration.rating_support import Clock, running_consumer, settings

pytestmark = pytest.mark.integration


def test_an_upgrade_on_day_15_prorates_the_base_fee(
    kafka_bootstrap, kafka_config, topics, database_url, db_schema
):
    engine = make_engine(database_url, db_schema)
    relay = Relay(engine, kafka_config, topics)
    try:
        growth = offer("growth", "1000.00", 10_000_000, "0.0002")
        scale = offer("scale", "2000.00", 50_000_000, "0.00015")
        publish(engine, growth, scale, now=at(1))
        provisioning.create_customer(engine, "acme", name=None, who="sales", now=at(1))
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
            who="sales",
            now=at(1),
        )
        assert relay(at(1)) == 1
        clock = Clock(at(10))
        with running_consumer(settings(kafka_bootstrap, topics, database_url, db_schema), clock=clock):
            whole = [
                (at(1), "base_fee", "growth", D("1000.00"), "rated", "base fee of growth v1 for 30/30 days")
            ]
            wait_until(
                lambda: fee_lines(database_url, db_schema) == whole,
                "the whole-month Growth line",
                timeout_s=60,
                every_s=0.2,
            )

            provisioning.change_subscription(
                engine,
                "acme",
                provisioning.Change(plan="scale"),
                at=When.IMMEDIATELY,
                who="sales",
                now=at(15),
            )
            clock.now = at(15)
            # scale from Nov 15 (growth ended at the change: its open-ended snapshot, lower in version, holds before it)
            assert relay(at(15)) == 1
            # growth: 1,000 x 14/30 = 466.666... -> 466.67; scale: 2,000 x 16/30 = 1,066.666... -> 1,066.67
            prorated = [
                (at(1), "base_fee", "growth", D("466.67"), "rated", "base fee of growth v1 for 14/30 days"),
                (at(1), "base_fee", "scale", D("1066.67"), "rated", "base fee of scale v1 for 16/30 days"),
            ]
            wait_until(
                lambda: fee_lines(database_url, db_schema) == prorated,
                "the prorated lines",
                timeout_s=60,
                every_s=0.2,
            )
            # the invoice: 466.67 + 1,066.67 = 1,533.34, two lines (where both full fees were 3,000.00)
            assert invoices(database_url, db_schema) == [("acme", at(1), D("1533.34"), D(0), D("1533.34"), 2)]
        # the Growth line was updated in place (its stretch still starts on the 1st): none superseded
        assert fee_lines(database_url, db_schema, superseded=True) == prorated
    finally:
        relay.close()
        engine.dispose()
