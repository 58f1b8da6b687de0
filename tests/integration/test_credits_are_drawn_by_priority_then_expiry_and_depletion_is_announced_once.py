"""Prepaid credit pays overage by priority, then earliest expiry; an expired grant pays nothing; a
falling total gives credit back; each time the balance reaches zero one credits_depleted event is
published, once; the balance always equals the sum of the ledger entries."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from metergate.db.credit_store import balances, expire_due, grant_credit
from metergate.db.engine import make_engine
from metergate.domain.ledger import Grant
from metergate.domain.records import LimitKind, Pricing, PricingModel
from tests.integration.rating_support import (
    Feed,
    aggregate,
    limit_events,
    metered,
    query,
    run_consumer,
    settings,
    snapshot,
)

pytestmark = pytest.mark.integration

TOKENS = Pricing(model=PricingModel.PER_UNIT, unit_price=D("0.01"))
LINE = "nimbus|sub-nimbus|tokens|2026-03-01T00:00:00+00:00|usage"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def test_credits_are_drawn_by_priority_then_expiry_and_depletion_is_announced_once(
    kafka_bootstrap, kafka_config, topics, database_url, db_schema, request
):
    engine = make_engine(database_url, db_schema)
    request.addfinalizer(engine.dispose)
    with engine.begin() as conn:
        granted = utc(2026, 1, 1)
        # drawn second: lower priority, although it expires first
        grant_credit(
            conn, Grant("bonus", "nimbus", "USD", D("20.00"), 5, granted, expires_at=utc(2026, 6, 1))
        )
        grant_credit(
            conn, Grant("prepaid", "nimbus", "USD", D("30.00"), 1, granted, expires_at=utc(2027, 1, 1))
        )
        grant_credit(
            conn, Grant("trial", "nimbus", "USD", D("10.00"), 0, granted, expires_at=utc(2026, 2, 1))
        )
        assert [e.idempotency_key for e in expire_due(conn, utc(2026, 2, 15))] == ["expiry:trial"]
        assert expire_due(conn, utc(2026, 2, 16)) == []  # once

    feed = Feed(kafka_config, topics)
    feed.snapshot(snapshot("nimbus", [metered("tokens", TOKENS)]))
    # running totals (x 0.01 USD): 10, 35, 60 | 70, 40 (a gauge falls), 80
    for version, total in enumerate(["1000", "3500", "6000"], start=1):
        feed.aggregate(aggregate("nimbus", "tokens", total, version))
    feed.flush()
    rating = settings(kafka_bootstrap, topics, database_url, db_schema, batch_size=1)
    run_consumer(rating, feed.aggregate_ends)
    for version, total in enumerate(["7000", "4000", "8000"], start=4):
        feed.aggregate(aggregate("nimbus", "tokens", total, version))
    feed.flush()
    run_consumer(rating, feed.aggregate_ends)  # a second process: state comes from PostgreSQL

    entries = query(
        database_url,
        db_schema,
        "SELECT idempotency_key, entry_type, grant_id, amount FROM credit_ledger ORDER BY entry_id",
    )
    assert entries == [
        ("grant:bonus", "credit_grant", "bonus", D("20.00")),
        ("grant:prepaid", "credit_grant", "prepaid", D("30.00")),
        ("grant:trial", "credit_grant", "trial", D("10.00")),
        ("expiry:trial", "expiry", "trial", D("-10.00")),
        (f"usage_debit:{LINE}|v1|prepaid", "usage_debit", "prepaid", D("-10.00")),
        (f"usage_debit:{LINE}|v2|prepaid", "usage_debit", "prepaid", D("-20.00")),
        (f"usage_debit:{LINE}|v2|bonus", "usage_debit", "bonus", D("-5.00")),
        (f"usage_debit:{LINE}|v3|bonus", "usage_debit", "bonus", D("-15.00")),
        (f"usage_refund:{LINE}|v5|bonus", "adjustment", "bonus", D("10.00")),
        (f"usage_debit:{LINE}|v6|bonus", "usage_debit", "bonus", D("-10.00")),
    ]
    line = query(
        database_url,
        db_schema,
        "SELECT amount, credits_applied, amount_due, credit_sources FROM line_items WHERE line_key = :k",
        k=LINE,
    )
    assert line == [(D("80.00"), D("50.00"), D("30.00"), {"bonus": "20.00", "prepaid": "30.00"})]

    with engine.begin() as conn:
        (balance,) = balances(conn, "nimbus")
        ledger_sum = conn.execute(
            text("SELECT sum(amount) FROM credit_ledger WHERE customer_id = 'nimbus'")
        ).scalar()
        running = conn.execute(
            text("SELECT grant_id, remaining, expired FROM credit_grants ORDER BY grant_id")
        ).all()
        recomputed = conn.execute(
            text("SELECT grant_id, remaining, expired FROM finance_grant_balances ORDER BY grant_id")
        ).all()
    assert balance.balance == ledger_sum == 0
    assert (balance.granted, balance.debited, balance.adjusted, balance.expired) == (
        D("60.00"),
        D("-60.00"),
        D("10.00"),
        D("-10.00"),
    )
    assert (
        running
        == recomputed
        == [("bonus", D("0.00"), False), ("prepaid", D("0.00"), False), ("trial", D("0.00"), True)]
    )
    assert query(database_url, db_schema, "SELECT depletions FROM credit_accounts") == [(2,)]

    # twice depleted (v3, then again at v6 after the refund): two events, each published once
    depleted = [e for e in limit_events(kafka_config, topics) if e.kind is LimitKind.CREDITS_DEPLETED]
    assert [(e.limit_event_id, e.usage, e.feature, e.meter, e.event_id) for e in depleted] == [
        ("nimbus|credits|USD|credits_depleted|1", D("6000"), "tokens", "tokens", "nimbus-tokens-3"),
        ("nimbus|credits|USD|credits_depleted|2", D("8000"), "tokens", "tokens", "nimbus-tokens-6"),
    ]
    assert query(database_url, db_schema, "SELECT count(*) FROM limit_outbox WHERE published_at IS NULL") == [
        (0,)
    ]

    # the ledger is append-only
    for statement in ("UPDATE credit_ledger SET amount = 0", "DELETE FROM credit_ledger"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
