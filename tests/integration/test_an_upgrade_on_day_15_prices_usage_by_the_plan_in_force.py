"""An upgrade on day 15 prices each side's usage by the plan in force then: Growth (10,000,000 API
calls included, $0.20 per extra 1,000) upgraded to Scale (50,000,000 included, $0.15 per extra
1,000) on 15 November 2026, usage on both sides, through the real broker and PostgreSQL: the
subscription provisioned and changed in PostgreSQL and relayed to entitlements.snapshots, the
metering worker counting the events, rating pricing its aggregates. The usage lines equal the
domain README's worked example, computed by hand. The clock is injected: the relay's, and the
metering worker's wall clock (tests/fake_date), 20 November 2026 12:00 UTC; never today's date."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from metergate.db.engine import make_engine
from metergate.domain.records import UsageEvent, aggregate_key
from metergate.testing.waiting import wait_until
from tests.integration.metering_support import AggregateWatcher, EventProducer
from tests.integration.rating_support import settings
from tests.integration.terms_support import (
    CUSTOMER,
    GROWTH,
    SCALE,
    Catalog,
    at,
    clocked_worker,
    rated_version,
    rating_thread,
    usage_lines,
)

pytestmark = pytest.mark.integration

NOW = at(20, hour=12)
KEY = aggregate_key(CUSTOMER, "api_calls", at(1))
#: (event time, calls): 6,000,000 under Growth, 30,000,000 under Scale; one Growth event is sent
#: after the Scale ones (a late event keeps the terms of its own time)
USAGE = [
    (at(2), 2_000_000),
    (at(6), 2_000_000),
    (at(16), 15_000_000),
    (at(14, hour=23), 2_000_000),
    (at(18), 15_000_000),
]


def test_an_upgrade_on_day_15_prices_usage_by_the_plan_in_force(
    kafka_bootstrap, kafka_config, topics, database_url, db_schema, tmp_path
):
    engine = make_engine(database_url, db_schema)
    catalog = Catalog(engine, kafka_config, topics)
    worker = clocked_worker(kafka_bootstrap, topics, tmp_path / "worker", NOW)
    watcher = AggregateWatcher(kafka_config, topics)
    try:
        catalog.plans(GROWTH, SCALE, now=at(1))
        catalog.subscribe("growth", at(1))
        assert catalog.relay(at(1)) == [("growth", at(1), None)]
        catalog.change("scale", None, at=at(15), now=at(10))  # scheduled on the 10th for the 15th
        assert catalog.relay(at(10)) == [("growth", at(1), at(15))]
        assert catalog.relay(at(15)) == [("scale", at(15), None)]

        worker.start()
        events = EventProducer(kafka_config, topics)
        for index, (moment, calls) in enumerate(USAGE):
            events.send(
                UsageEvent(
                    event_id=f"call-{index}",
                    customer_id=CUSTOMER,
                    meter="api_calls",
                    quantity=D(calls),
                    timestamp=moment,
                    source="journey",
                )
            )
        events.flush()
        watcher.wait_for({KEY: (D(36_000_000), 5)}, workers=[worker])  # limits see the whole total
        final = watcher.latest[KEY]
        assert [(s.start, s.plan_key, s.value, s.event_count) for s in final.segments] == [
            (at(1), "growth", D(6_000_000), 3),
            (at(15), "scale", D(30_000_000), 2),
        ]

        with rating_thread(
            settings(kafka_bootstrap, topics, database_url, db_schema, group_id="terms-rating")
        ):
            wait_until(
                lambda: rated_version(database_url, db_schema, KEY) == final.version,
                "rating to price the final aggregate version",
                timeout_s=90,
            )
        # The usage lines only: the base-fee lines (14/30 of Growth's fee + 16/30 of Scale's) are
        # rating's base-fee billing, tested on their own.
        # Growth, 1-14 November: 14/30 x 10,000,000 = 4,666,666.67 -> 4,666,667 included;
        #   6,000,000 - 4,666,667 = 1,333,333 x 0.0002 = 266.6666 -> 266.67
        # Scale, 15-30 November: 16/30 x 50,000,000 = 26,666,666.67 -> 26,666,667 included;
        #   30,000,000 - 26,666,667 = 3,333,333 x 0.00015 = 499.99995 -> 500.00
        period = "2026-11-01T00:00:00+00:00"
        assert usage_lines(database_url, db_schema) == [
            (
                f"acme|acme|api_calls|{period}|usage",
                "growth",
                1,
                D(6_000_000),
                D(4_666_667),
                D(1_333_333),
                D("0.0002"),
                D("266.67"),
                "rated",
                3,
                "1333333 x 0.0002; growth v1 for 14/30 days",
                final.version,
            ),
            (
                f"acme|acme|api_calls|{period}|usage|2026-11-15T00:00:00+00:00",
                "scale",
                1,
                D(30_000_000),
                D(26_666_667),
                D(3_333_333),
                D("0.00015"),
                D("500.00"),
                "rated",
                2,
                "3333333 x 0.00015; scale v1 for 16/30 days",
                final.version,
            ),
        ]
    finally:
        watcher.close()
        catalog.close()
        if worker.process is not None:
            assert worker.stop() == 0, worker.tail()
        engine.dispose()
