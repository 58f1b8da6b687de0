"""The SDK validates, sends with key = customer_id, and what it sends decodes back to the same event."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from metergate.domain.records import UsageEvent
from metergate.errors import InvalidEvent
from metergate.sdk import UsageProducer
from metergate.testing.topics import read_topic
from metergate.wire.codec import codec

pytestmark = pytest.mark.integration


def test_recorded_events_arrive_keyed_by_customer_and_decode_exactly(kafka_config, topics):
    when = datetime(2026, 11, 3, 12, 30, 15, 123000, tzinfo=UTC)
    with UsageProducer(kafka_config, topics.events, source="sdk-test") as usage:
        first = usage.record(
            customer_id="acme", meter="api_calls", quantity=3, event_id="e-1", timestamp=when
        )
        result = usage.record_many(
            [
                {
                    "event_id": "e-2",
                    "customer_id": "acme",
                    "meter": "tokens",
                    "quantity": "1234.5",
                    "timestamp": when,
                    "properties": {"model": "small"},
                },
                {
                    "event_id": "e-3",
                    "customer_id": "globex",
                    "meter": "api_calls",
                    "quantity": "1",
                    "timestamp": when,
                },
            ]
        )
    assert result.sent == 2 and result.rejected == []
    records = read_topic(kafka_config, topics.events, expect=3)
    decoded = {
        codec(UsageEvent).decode(value).event_id: (key, codec(UsageEvent).decode(value))
        for key, value, _, _ in records
    }
    assert sorted(decoded) == ["e-1", "e-2", "e-3"]
    assert decoded["e-1"] == (b"acme", first)
    assert decoded["e-2"][1].quantity == Decimal("1234.5")
    assert decoded["e-2"][1].properties == {"model": "small"}
    assert decoded["e-2"][1].source == "sdk-test"
    assert decoded["e-3"][0] == b"globex"
    # one customer's events share a partition
    partitions = {p for key, _, p, _ in records if key == b"acme"}
    assert len(partitions) == 1


def test_invalid_event_is_never_sent(kafka_config, topics):
    with UsageProducer(kafka_config, topics.events) as usage:
        with pytest.raises(InvalidEvent) as error:
            usage.record(customer_id="acme", meter="api_calls", quantity=Decimal("-1"), event_id="bad")
        assert error.value.field == "quantity"
        assert "must be >= 0" in str(error.value)
        result = usage.record_many(
            [
                {
                    "event_id": "ok",
                    "customer_id": "acme",
                    "meter": "m",
                    "quantity": 1,
                    "timestamp": datetime.now(UTC),
                },
                {
                    "event_id": "no-meter",
                    "customer_id": "acme",
                    "quantity": 1,
                    "timestamp": datetime.now(UTC),
                },
                {
                    "event_id": "nan",
                    "customer_id": "acme",
                    "meter": "m",
                    "quantity": "NaN",
                    "timestamp": datetime.now(UTC),
                },
            ],
            skip_invalid=True,
        )
    assert result.sent == 1
    assert [(index, error.field, error.reason) for index, error in result.rejected] == [
        (1, "meter", "missing_field"),
        (2, "quantity", "invalid_quantity"),
    ]
    records = read_topic(kafka_config, topics.events, expect=1)
    assert [codec(UsageEvent).decode(value).event_id for _, value, _, _ in records] == ["ok"]
