"""A replay after a catalog change bills exactly what it billed before: November's usage (Growth
upgraded to Scale on the 15th) is metered and rated; then a changed Scale plan (version 2, $0.30
per extra 1,000 calls) is published and the customer moved to it from 1 December; the aggregates
replayed into a fresh rating state (another PostgreSQL schema, another consumer group, from the
first offset) give the same November line items, while December's usage is priced by the new
version. Real broker and PostgreSQL; the clock is injected (the relay's, and the metering worker's
wall clock: 1 December 2026 12:00 UTC), never today's date."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from metergate.db.engine import make_engine
from metergate.domain.records import UsageEvent, aggregate_key
from metergate.testing.waiting import wait_until
from tests.integration.metering_support import AggregateWatcher, EventProducer
from tests.integration.rating_support import another_schema, settings
from tests.integration.terms_support import (
    CUSTOMER,
    GROWTH,
    SCALE,
    Catalog,
    at,
    clocked_worker,
    offer,
    rated_version,
    rating_thread,
    usage_lines,
)

pytestmark = pytest.mark.integration

NOW = at(1, month=12, hour=12)
NOVEMBER = aggregate_key(CUSTOMER, "api_calls", at(1))
DECEMBER = aggregate_key(CUSTOMER, "api_calls", at(1, month=12))
SCALE_V2 = offer("scale", "2000.00", 50_000_000, "0.0003", version=2)


def test_a_replay_after_a_catalog_change_bills_exactly_what_it_billed_before(
    kafka_bootstrap, kafka_config, topics, database_url, db_schema, tmp_path
):
    engine = make_engine(database_url, db_schema)
    catalog = Catalog(engine, kafka_config, topics)
    worker = clocked_worker(kafka_bootstrap, topics, tmp_path / "worker", NOW)
    watcher = AggregateWatcher(kafka_config, topics)
    events = EventProducer(kafka_config, topics)
    sent = 0

    def use(calls: int, moment) -> None:  # type: ignore[no-untyped-def]
        nonlocal sent
        sent += 1
        events.send(
            UsageEvent(
                event_id=f"call-{sent}",
                customer_id=CUSTOMER,
                meter="api_calls",
                quantity=D(calls),
                timestamp=moment,
                source="journey",
            )
        )

    def rate(schema: str, group: str, versions: dict[str, int]) -> list[tuple[object, ...]]:
        """Rate with a fresh consumer group until every key is priced at its final version."""
        with rating_thread(settings(kafka_bootstrap, topics, database_url, schema, group_id=group)):
            for key, version in versions.items():
                wait_until(
                    lambda key=key, version=version: rated_version(database_url, schema, key) == version,
                    f"rating to price {key} version {version}",
                    timeout_s=90,
                )
        return usage_lines(database_url, schema)

    try:
        catalog.plans(GROWTH, SCALE, now=at(1))
        catalog.subscribe("growth", at(1))
        catalog.relay(at(1))
        catalog.change("scale", None, at=at(15), now=at(10))
        catalog.relay(at(10))
        catalog.relay(at(15))
        worker.start()
        for calls, moment in ((4_000_000, at(3)), (2_000_000, at(9)), (30_000_000, at(20))):
            use(calls, moment)
        events.flush()
        watcher.wait_for({NOVEMBER: (D(36_000_000), 3)}, workers=[worker])
        november = watcher.latest[NOVEMBER].version

        billed = rate(db_schema, "terms-first", {NOVEMBER: november})
        # as the README computes it: Growth 14/30 -> 266.67, Scale 16/30 -> 500.00
        assert [row[7] for row in billed] == [D("266.67"), D("500.00")]

        # the catalog changes: Scale v2 published, the customer moved to it at the period end
        catalog.plans(SCALE_V2, now=at(25))
        catalog.change("scale", 2, at=at(1, month=12), now=at(25))
        assert catalog.relay(at(25)) == [("scale", at(15), at(1, month=12))]  # Scale v1, now closed
        assert catalog.relay(at(1, month=12)) == [("scale", at(1, month=12), None)]  # Scale v2
        use(60_000_000, at(1, month=12, hour=6))
        events.flush()
        watcher.wait_for({NOVEMBER: (D(36_000_000), 3), DECEMBER: (D(60_000_000), 1)}, workers=[worker])

        with another_schema(database_url) as fresh:
            replayed = rate(
                fresh, "terms-replay", {NOVEMBER: november, DECEMBER: watcher.latest[DECEMBER].version}
            )
        # the usage lines only (base-fee lines are rating's base-fee billing, tested on their own);
        # each line's columns but its write times and snapshot_version (Scale v1's terms were re-sent
        # with their interval closed at 1 December: the same terms, a newer snapshot version)
        december_key = f"acme|acme|api_calls|{at(1, month=12).isoformat()}|usage"
        assert [row for row in replayed if row[0] != december_key] == billed
        (december,) = [row for row in replayed if row[0] == december_key]
        # all of December under Scale v2: 60,000,000 - 50,000,000 included = 10,000,000 x 0.0003
        assert december[1:8] == (
            "scale",
            2,
            D(60_000_000),
            D(50_000_000),
            D(10_000_000),
            D("0.0003"),
            D("3000.00"),
        )
    finally:
        watcher.close()
        catalog.close()
        if worker.process is not None:
            assert worker.stop() == 0, worker.tail()
        engine.dispose()
