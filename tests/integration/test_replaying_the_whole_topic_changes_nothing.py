"""Replaying usage.aggregates from offset 0 (and redeliveries, older versions arriving late) changes
no line item, no ledger entry, no invoice row, and announces no depletion again."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from metergate.db import rating_store
from metergate.db.credit_store import grant_credit
from metergate.db.engine import make_engine
from metergate.domain.ledger import Grant
from tests.integration.rating_support import (
    APRIL,
    GRADUATED,
    PER_UNIT,
    Feed,
    aggregate,
    limit_events,
    metered,
    query,
    run_consumer,
    settings,
    snapshot,
    state,
)

pytestmark = pytest.mark.integration


def test_replaying_the_whole_topic_changes_nothing(
    kafka_bootstrap, kafka_config, topics, database_url, db_schema, request
):
    engine = make_engine(database_url, db_schema)
    request.addfinalizer(engine.dispose)
    with engine.begin() as conn:
        grant_credit(conn, Grant("prepaid", "acme", "USD", D("5.00"), 1, datetime(2026, 1, 1, tzinfo=UTC)))

    feed = Feed(kafka_config, topics)
    feed.snapshot(
        snapshot("acme", [metered("api_calls", PER_UNIT), metered("seats", GRADUATED)], base_fee="10")
    )
    feed.snapshot(snapshot("bolt", [metered("api_calls", GRADUATED, "100")]))
    for version in range(1, 31):
        feed.aggregate(aggregate("acme", "api_calls", str(200 * version), version))
        feed.aggregate(aggregate("bolt", "api_calls", str(150 * version), version))
        if version % 10 == 0:  # a redelivery, and an older version arriving after a newer one
            feed.aggregate(aggregate("acme", "api_calls", str(200 * version), version))
            feed.aggregate(aggregate("bolt", "api_calls", "1", version - 5))
    feed.aggregate(aggregate("acme", "seats", "12", 1, period_start=APRIL))
    feed.flush()

    rating = settings(kafka_bootstrap, topics, database_url, db_schema, batch_size=7)
    first = run_consumer(rating, feed.aggregate_ends)
    before = state(database_url, db_schema)
    assert first.committed_records == feed.sent == 67  # 61 versions, 3 redeliveries, 3 older copies
    usage = dict(
        query(
            database_url,
            db_schema,
            "SELECT customer_id || ':' || meter || ':' || aggregate_version, amount FROM line_items"
            " WHERE charge = 'usage'",
        )
    )
    # acme: 6000 x 0.002 = 12.00 (5.00 from credit); bolt: 4500 - 100 included = 4400 billable
    # = 1000 x 0.10 + (3400 x 0.08 + 5) = 377.00; seats in April: 12 x 0.10 = 1.20
    assert usage == {
        "acme:api_calls:30": D("12.00"),
        "bolt:api_calls:30": D("377.00"),
        "acme:seats:1": D("1.20"),
    }
    depleted = [e for e in limit_events(kafka_config, topics) if e.kind.value == "credits_depleted"]
    assert [e.limit_event_id for e in depleted] == ["acme|credits|USD|credits_depleted|1"]

    with engine.begin() as conn:
        assert rating_store.reset_offsets(conn, rating.group_id, topics.aggregates) == len(
            feed.aggregate_ends
        )
    replay = run_consumer(
        settings(kafka_bootstrap, topics, database_url, db_schema, batch_size=50), feed.aggregate_ends
    )
    assert replay.committed_updates == 0
    assert state(database_url, db_schema) == before
    depleted = [e for e in limit_events(kafka_config, topics) if e.kind.value == "credits_depleted"]
    assert len(depleted) == 1
