"""Aggregates with NUL / control characters / 10 KB ids or an overflowing total, next to valid ones,
on the real broker: rating bills every valid one exactly, sends each bad one to the DLQ with its
reason and original bytes, and keeps running (before: binary COPY raised CharacterNotInRepertoire,
and every restart crashed again in load_credit)."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from metergate.domain.records import UsageAggregate
from metergate.wire.codec import codec
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

GOOD = [f"good-{i}" for i in range(20)] + ["a|b", "a", "back\\slash", "日本"]


def _raw(agg: UsageAggregate, **fields: object) -> bytes:
    """An aggregate's bytes with fields the model would refuse (as a foreign producer could send)."""
    return codec(UsageAggregate).encode(agg.model_construct(**{**dict(agg), **fields}))


def test_a_poison_id_never_stops_rating(kafka_bootstrap, kafka_config, topics, database_url, db_schema):
    feed = Feed(kafka_config, topics)
    for customer in GOOD:
        feed.snapshot(snapshot(customer, [metered("api_calls", PER_UNIT), metered("b|c", PER_UNIT)]))
    feed.snapshot(snapshot("x\x00y", [metered("api_calls", PER_UNIT)]))
    bad_snapshot = snapshot("euro", [metered("api_calls", PER_UNIT)], currency="EURO")
    feed.snapshot(bad_snapshot)

    expected: dict[tuple[str, str], D] = {}  # (customer, meter) -> amount, by hand: value x 0.002
    poison: dict[bytes, tuple[str, str]] = {}  # original value -> (reason, message)
    bad_id, bad_value = "invalid_field", "invalid_value"
    cases = [
        (
            {"customer_id": "x\x00y"},
            bad_id,
            "customer_id: contains a control character (U+0000) at position 1",
        ),
        ({"meter": "api\x1b[0m"}, bad_id, "meter: contains a control character (U+001B) at position 3"),
        (
            {"customer_id": "evil\u202e"},
            bad_id,
            "customer_id: contains an invisible format character (U+202E) at position 4",
        ),
        (
            {"last_event_id": "e\x00"},
            bad_id,
            "last_event_id: contains a control character (U+0000) at position 1",
        ),
        (
            {"subscription_id": "sub\x7f"},
            bad_id,
            "subscription_id: contains a control character (U+007F) at position 3",
        ),
        # refused by the codec's model (at most 256 characters) before the id rule sees it
        ({"customer_id": "c" * 10_240}, "invalid_record", "String should have at most 256 characters"),
        ({"value": D("8.1e29")}, bad_value, "value: running total 8.100000E+29 does not fit decimal(38, 9)"),
    ]
    for version in range(1, 4):
        for index, customer in enumerate(GOOD):
            value = 1000 * version + index
            feed.aggregate(aggregate(customer, "api_calls", str(value), version))
            expected[(customer, "api_calls")] = (D(value) * D("0.002")).quantize(D("0.01"))
        # two valid keys that collided before: customer "a|b" + meter "c" vs customer "a" + meter "b|c"
        feed.aggregate(aggregate("a|b", "c", str(500 * version), version))
        feed.aggregate(aggregate("a", "b|c", str(700 * version), version))
        expected[("a", "b|c")] = (D(700 * version) * D("0.002")).quantize(D("0.01"))
        expected[("a|b", "c")] = D(0)  # meter c is not in the plan: stored unpriced
        base = aggregate("good-0", "api_calls", "1", version)
        for number, (fields, reason, message) in enumerate(cases):
            value_bytes = _raw(base, **fields)  # distinct per version (the version field differs)
            feed.raw(topics.aggregates, f"poison-{number}".encode(), value_bytes)
            poison[value_bytes] = (reason, message)
    feed.aggregate(aggregate("euro", "api_calls", "100", 1))  # its snapshot was refused: unknown_plan
    feed.flush()

    consumer = run_consumer(
        settings(kafka_bootstrap, topics, database_url, db_schema, batch_size=40), feed.aggregate_ends
    )

    # every valid customer billed exactly
    rows = query(
        database_url,
        db_schema,
        "SELECT customer_id, meter, amount, aggregate_version FROM line_items WHERE charge = 'usage'",
    )
    billed = {(c, m): amount for c, m, amount, _ in rows}
    assert {k: v for k, v in billed.items() if k[0] != "euro"} == expected
    assert all(version == 3 for c, _, _, version in rows if c != "euro")
    assert len(rows) == len(expected) + 1  # and the refused-snapshot customer, unpriced

    letters = dead_letters(kafka_config, topics)
    aggregates = [letter for letter in letters if letter.source.topic == topics.aggregates]
    by_value = {letter.original_value: letter for letter in aggregates if letter.original_value in poison}
    assert len(by_value) == len(poison) == 21
    for value_bytes, (reason, message) in poison.items():
        letter = by_value[value_bytes]
        assert (letter.reason, letter.service) == (reason, "rating")
        assert message in letter.message, letter.message
    assert [letter.reason for letter in aggregates if letter.original_value not in poison] == ["unknown_plan"]
    snapshot_letters = [letter for letter in letters if letter.source.topic == topics.snapshots]
    assert sorted(letter.message for letter in snapshot_letters) == [
        "currency: expected an ISO 4217 code of three capital letters, got 'EURO'",
        "customer_id: contains a control character (U+0000) at position 1",
    ]

    # the accounting invariant: consumed = accepted + duplicate + rejected + tombstone
    total = feed.sent
    counts = consumer.accounting
    assert counts["consumed"] == total == 3 * (len(GOOD) + 2 + 7) + 1
    assert (counts["rejected"], counts["tombstone"]) == (21, 0)
    # versions of one key in one batch collapse to the newest: accepted or duplicate, never lost
    assert counts["accepted"] + counts["duplicate"] == 3 * (len(GOOD) + 2) + 1
    assert counts["consumed"] == sum(counts[k] for k in ("accepted", "duplicate", "rejected", "tombstone"))
