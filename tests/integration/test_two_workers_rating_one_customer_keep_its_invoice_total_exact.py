"""One customer's meters hash to different partitions, so two rating workers can refresh the same
invoice row in overlapping transactions: the row ends with both lines, whichever commits first."""

from __future__ import annotations

import threading
from decimal import Decimal as D

import pytest

from metergate.db import rating_store
from metergate.db.engine import make_engine
from metergate.domain.rating import RatingFold
from metergate.domain.records import Pricing, PricingModel
from metergate.testing.waiting import wait_until
from tests.integration.rating_support import MARCH, aggregate, metered, query, snapshot

pytestmark = pytest.mark.integration

ONE_EACH = Pricing(model=PricingModel.PER_UNIT, unit_price=D(1))
SNAPSHOT = snapshot("acme", [metered("api_calls", ONE_EACH), metered("tokens", ONE_EACH)])


def test_two_workers_rating_one_customer_keep_its_invoice_total_exact(database_url, db_schema):
    engine = make_engine(database_url, db_schema)
    rating_store.install(engine)
    try:
        lines: dict = {}

        def rate(conn, meter: str, value: str, version: int) -> None:
            key = aggregate("acme", meter, value, version).key
            fold = RatingFold(lines={key: dict(lines.get(key, {}))}, wallets={}, credits={})
            fold.apply(aggregate("acme", meter, value, version), SNAPSHOT)
            stored = set(lines.get(key, {}))
            rating_store.write_lines(
                conn, rating_store.stage_lines(conn, list(fold.changed.values()), {}, stored)
            )
            rating_store.refresh_invoices(conn, fold.invoices)
            lines[key] = fold.lines[key]

        with engine.begin() as conn:  # both meters rated once: 10 + 20
            rate(conn, "api_calls", "10", 1)
            rate(conn, "tokens", "20", 1)

        first = engine.connect()  # worker A: api_calls 10 -> 15, refreshed, not committed yet
        transaction = first.begin()
        rate(first, "api_calls", "15", 2)

        def second_worker() -> None:  # worker B, meanwhile: tokens 20 -> 27
            with engine.begin() as conn:
                rate(conn, "tokens", "27", 2)

        worker = threading.Thread(target=second_worker)
        worker.start()

        def b_waits() -> bool:  # B has written its line and waits at its refresh for A's invoice lock
            if _a_backend_waits_for_a_lock(engine):
                return True
            assert worker.is_alive(), "B ended before it reached its refresh"
            return False

        wait_until(b_waits, "B to reach its refresh", timeout_s=30, every_s=0.02)
        transaction.commit()
        first.close()
        worker.join(30)
        assert not worker.is_alive()

        assert query(
            database_url,
            db_schema,
            "SELECT amount_total, amount_due, line_count FROM invoice_sync WHERE customer_id = 'acme'"
            " AND period_start = :start",
            start=MARCH,
        ) == [(D(42), D(42), 2)]
    finally:
        engine.dispose()


def _a_backend_waits_for_a_lock(engine) -> bool:
    with engine.connect() as conn:
        waiting = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).scalar()
    return bool(waiting)
