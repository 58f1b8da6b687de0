"""Defence in depth behind the checks at decode: with `check_aggregate` switched off, aggregates
with a NUL in an id reach PostgreSQL (binary COPY and the credit lookup refuse them, as before the
fix): rating writes that batch one record at a time, sends the refused records to the DLQ as
`unwritable` with PostgreSQL's message, bills every other one and never stops."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from metergate_services.rating import consumer as consumer_module
from tests.integration.rating_support import (
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


def test_a_record_postgresql_refuses_goes_to_the_dlq_and_rating_goes_on(
    kafka_bootstrap, kafka_config, topics, database_url, db_schema, monkeypatch
):
    monkeypatch.setattr(consumer_module, "check_aggregate", lambda aggregate: None)
    feed = Feed(kafka_config, topics)
    customers = [f"ok-{i}" for i in range(10)]
    for customer in customers:
        feed.snapshot(snapshot(customer, [metered("api_calls", PER_UNIT)]))
    for version in (1, 2):
        for index, customer in enumerate(customers):
            feed.aggregate(aggregate(customer, "api_calls", str(1000 * version + index), version))
        feed.aggregate(aggregate("x\x00y", "api_calls", "5", version))  # refused by the credit lookup
        poisoned = aggregate("ok-0", "tokens", "5", version).model_copy(
            update={"last_event_id": f"e\x00{version}"}
        )
        feed.aggregate(poisoned)  # refused by the binary COPY of line items
    feed.flush()

    consumer = run_consumer(
        settings(kafka_bootstrap, topics, database_url, db_schema, batch_size=8), feed.aggregate_ends
    )

    billed = dict(
        query(database_url, db_schema, "SELECT customer_id, amount FROM line_items WHERE meter = 'api_calls'")
    )
    assert billed == {c: (D(2000 + i) * D("0.002")).quantize(D("0.01")) for i, c in enumerate(customers)}
    letters = [letter for letter in dead_letters(kafka_config, topics) if letter.reason == "unwritable"]
    assert len(letters) == 4
    assert all(letter.message.startswith("PostgreSQL cannot store this record: ") for letter in letters)
    assert all(b"\x00" in (letter.original_value or b"") for letter in letters)
    counts = consumer.accounting
    assert counts["consumed"] == feed.sent == 24
    assert counts["rejected"] == 4
    assert (
        counts["consumed"]
        == counts["accepted"] + counts["duplicate"] + counts["rejected"] + counts["tombstone"]
    )
