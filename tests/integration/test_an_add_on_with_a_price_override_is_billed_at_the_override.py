"""Sales ops sell Growth ($1,000/month) with 3 extra seat packs at a negotiated $150.00 a pack
(list price $200.00), through the provisioning use case the CLI and the admin API call; the
snapshot relay publishes it, and rating bills the add-on as a line of its own at the override,
with no usage at all. Halfway through the month the deal is resized to 1 pack: both lines are
prorated, the one no longer wanted superseded."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from metergate import provisioning
from metergate.db.engine import make_engine
from metergate.domain.records import EntitlementSnapshot
from metergate.domain.subscriptions import AddOn, PriceOverrides, When
from metergate.testing.topics import read_topic
from metergate.testing.waiting import wait_until
from metergate.wire.codec import codec
from tests.integration.fee_support import Relay, at, calls, fee_lines, invoices, offer, publish
from tests.integration.rating_support import Clock, running_consumer, settings

pytestmark = pytest.mark.integration

SEATS = AddOn(key="seat_pack", currency="USD", fee=D("200.00"), features={"api_calls": calls(1_000_000, "0")})


def test_an_add_on_with_a_price_override_is_billed_at_the_override(
    kafka_bootstrap, kafka_config, topics, database_url, db_schema
):
    engine = make_engine(database_url, db_schema)
    relay = Relay(engine, kafka_config, topics)
    try:
        publish(engine, offer("growth", "1000.00", 10_000_000, "0.0002", add_ons=(SEATS,)), now=at(1))
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
            add_ons={"seat_pack": 3},
            variables={},
            overrides=PriceOverrides(add_on_fees={"seat_pack": D("150.00")}),
            who="sales",
            now=at(1),
        )
        assert relay(at(1)) == 1
        (record,) = read_topic(kafka_config, topics.snapshots, expect=1, idle_s=0.5)
        relayed = codec(EntitlementSnapshot).decode(record[1])
        # base_fee is the whole of it (1,000 + 3 x 150 = 1,450), the add-on named beside it
        assert (relayed.base_fee, [(a.add_on, a.quantity, a.fee) for a in relayed.add_on_fees]) == (
            D(1450),
            [("seat_pack", 3, D("150.00"))],
        )
        clock = Clock(at(10))
        with running_consumer(settings(kafka_bootstrap, topics, database_url, db_schema), clock=clock):
            # 3 packs x 150.00 = 450.00 (at the list price it would be 600.00)
            billed = [
                (
                    at(1),
                    "add_on:seat_pack",
                    "growth",
                    D("450.00"),
                    "rated",
                    "add-on seat_pack x3 for 30/30 days",
                ),
                (at(1), "base_fee", "growth", D("1000.00"), "rated", "base fee of growth v1 for 30/30 days"),
            ]
            wait_until(
                lambda: fee_lines(database_url, db_schema) == billed,
                "the base fee and the add-on",
                timeout_s=60,
                every_s=0.2,
            )
            assert invoices(database_url, db_schema) == [("acme", at(1), D("1450.00"), D(0), D("1450.00"), 2)]

            provisioning.change_subscription(
                engine,
                "acme",
                provisioning.Change(add_ons={"seat_pack": 1}),
                at=When.IMMEDIATELY,
                who="sales",
                now=at(16),
            )
            clock.now = at(16)
            assert relay(at(16)) == 1  # the terms from Nov 16 (the earlier ones ended: not sent again)
            # Nov 1-15 (15/30): plan 1,000 x 15/30 = 500.00, packs 3 x 150 x 15/30 = 225.00;
            # Nov 16-30 (15/30): plan 500.00 again (a line of its own: new terms), 1 x 150 x 15/30 = 75.00
            resized = [
                (
                    at(1),
                    "add_on:seat_pack",
                    "growth",
                    D("225.00"),
                    "rated",
                    "add-on seat_pack x3 for 15/30 days",
                ),
                (
                    at(1),
                    "add_on:seat_pack",
                    "growth",
                    D("75.00"),
                    "rated",
                    "add-on seat_pack x1 for 15/30 days",
                ),
                (at(1), "base_fee", "growth", D("500.00"), "rated", "base fee of growth v1 for 15/30 days"),
                (at(1), "base_fee", "growth", D("500.00"), "rated", "base fee of growth v1 for 15/30 days"),
            ]
            wait_until(
                lambda: fee_lines(database_url, db_schema) == resized,
                "the resized deal",
                timeout_s=60,
                every_s=0.2,
            )
            # 225 + 75 + 500 + 500 = 1,300.00
            assert invoices(database_url, db_schema) == [("acme", at(1), D("1300.00"), D(0), D("1300.00"), 4)]
    finally:
        relay.close()
        engine.dispose()
