"""Records rating cannot decode or price go to usage.dlq with a reason and their original bytes; the
consumer keeps rating what follows; usage of a customer without a plan is kept, unpriced, and
re-rated once the customer's snapshot arrives."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from metergate.domain.records import Pricing, PricingModel, UsageEvent
from metergate.wire.codec import codec
from tests.integration.rating_support import (
    MARCH,
    PER_UNIT,
    Feed,
    aggregate,
    dead_letters,
    metered,
    query,
    run_consumer,
    settings,
    snapshot,
)

pytestmark = pytest.mark.integration


def test_records_it_cannot_rate_go_to_the_dlq_and_rating_goes_on(
    kafka_bootstrap, kafka_config, topics, database_url, db_schema
):
    feed = Feed(kafka_config, topics)
    feed.snapshot(snapshot("good", [metered("api_calls", PER_UNIT)]))
    broken = Pricing(model=PricingModel.PACKAGE, unit_price=D(5), package_size=D(0))
    feed.snapshot(snapshot("misconfigured", [metered("api_calls", broken)]))
    feed.snapshot(snapshot("free", [metered("api_calls", PER_UNIT)], subscription=None))

    not_avro = b"this is not a record"
    event = UsageEvent(event_id="e1", customer_id="good", meter="api_calls", quantity=D(1), timestamp=MARCH)
    wrong_kind = codec(UsageEvent).encode(event)
    negative = aggregate("good", "storage", "-5", 1)
    feed.raw(topics.aggregates, b"good|api_calls|x", not_avro)
    feed.raw(topics.aggregates, b"good|api_calls|y", wrong_kind)
    feed.aggregate(negative)
    feed.raw(topics.aggregates, b"good|api_calls|tombstone", None)
    feed.aggregate(aggregate("stranger", "api_calls", "40", 1))  # no snapshot (yet)
    feed.aggregate(aggregate("misconfigured", "api_calls", "40", 1))
    feed.aggregate(aggregate("free", "api_calls", "40", 1))  # no subscription: tracked, not billed
    feed.aggregate(aggregate("good", "storage_gb", "3", 1))  # a meter the plan does not price
    feed.aggregate(aggregate("good", "api_calls", "1000", 1))  # and rating goes on
    feed.flush()

    run_consumer(
        settings(kafka_bootstrap, topics, database_url, db_schema, batch_size=3), feed.aggregate_ends
    )

    letters = dead_letters(kafka_config, topics)
    by_reason = {letter.reason: letter for letter in letters}
    assert sorted(by_reason) == [
        "invalid_pricing",
        "invalid_value",
        "not_avro",
        "unexpected_schema",
        "unknown_plan",
    ]
    assert len(letters) == 5
    assert by_reason["not_avro"].original_value == not_avro
    assert by_reason["not_avro"].original_key == b"good|api_calls|x"
    assert by_reason["unexpected_schema"].original_value == wrong_kind
    assert by_reason["invalid_pricing"].message.startswith("features.api_calls.pricing.package_size:")
    assert "value" in by_reason["invalid_value"].message
    assert all(letter.service == "rating" and letter.source.topic == topics.aggregates for letter in letters)
    positions = {(letter.source.partition, letter.source.offset) for letter in letters}
    assert len(positions) == 5

    lines = {
        customer + ":" + meter: (status, reason, amount)
        for customer, meter, status, reason, amount in query(
            database_url,
            db_schema,
            "SELECT customer_id, meter, status, unpriced_reason, amount FROM line_items WHERE charge = 'usage'",
        )
    }
    assert lines == {
        "stranger:api_calls": ("unpriced", "unknown_plan", D(0)),
        "misconfigured:api_calls": ("unpriced", "invalid_pricing", D(0)),
        "free:api_calls": ("unpriced", "no_subscription", D(0)),
        "good:storage_gb": ("unpriced", "meter_not_in_plan", D(0)),
        "good:api_calls": ("rated", None, D("2.00")),
    }

    # the stranger's snapshot arrives; its next version is rated and the unpriced line superseded
    feed.snapshot(snapshot("stranger", [metered("api_calls", PER_UNIT)]))
    feed.aggregate(aggregate("stranger", "api_calls", "50", 2))
    feed.flush()
    run_consumer(settings(kafka_bootstrap, topics, database_url, db_schema), feed.aggregate_ends)
    stranger = query(
        database_url,
        db_schema,
        "SELECT subscription_id, status, quantity, amount FROM line_items"
        " WHERE customer_id = 'stranger' AND charge = 'usage' ORDER BY subscription_id",
    )
    # the unpriced line came from the aggregate's subscription, the same: so it is now rated in place
    assert stranger == [("sub-stranger", "rated", D(50), D("0.10"))]
    totals = query(
        database_url,
        db_schema,
        "SELECT customer_id, amount_total FROM finance_period_totals WHERE customer_id IN ('stranger', 'good')"
        " ORDER BY 1",
    )
    assert totals == [("good", D("2.00")), ("stranger", D("0.10"))]
