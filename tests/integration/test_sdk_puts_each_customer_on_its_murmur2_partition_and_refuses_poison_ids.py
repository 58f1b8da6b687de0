"""The SDK partitions usage.events with Java's murmur2 (on a real broker, several partition counts)
and refuses ids with NUL / control characters / 10 KB before anything is sent."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from metergate.errors import InvalidEvent
from metergate.kafka.admin import create_topic
from metergate.sdk import UsageProducer
from metergate.testing.topics import read_topic
from tests.unit.test_usage_events_partitioner_is_javas_murmur2 import java_partition

pytestmark = pytest.mark.integration

WHEN = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
CUSTOMERS = [f"customer-{i}" for i in range(150)] + ["日本-株式会社", "\U0001f600", "a|b", "x" * 256]


def _topic(kafka_config, partitions: int) -> str:
    name = f"t{uuid.uuid4().hex[:10]}.usage.events"
    assert create_topic(kafka_config, name, partitions)
    return name


@pytest.mark.parametrize("partitions", [1, 3, 4, 7, 16])
def test_each_customer_lands_on_javas_murmur2_partition(kafka_config, partitions):
    topic = _topic(kafka_config, partitions)
    with UsageProducer(kafka_config, topic) as usage:
        for index, customer in enumerate(CUSTOMERS):
            for n in range(2):
                usage.record(
                    customer_id=customer,
                    meter="api_calls",
                    quantity=1,
                    event_id=f"e{index}-{n}",
                    timestamp=WHEN,
                )
    records = read_topic(kafka_config, topic, expect=2 * len(CUSTOMERS))
    assert len(records) == 2 * len(CUSTOMERS)
    seen = {(key, partition) for key, _, partition, _ in records}
    expected = {(c.encode(), java_partition(c.encode(), partitions)) for c in CUSTOMERS}
    assert seen == expected
    if partitions > 1:  # the hash spreads customers (a constant partition would also "match" n=1)
        assert len({p for _, p in seen}) == partitions


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"customer_id": "x\x00y"}, "customer_id: contains a control character (U+0000) at position 1"),
        ({"event_id": "e\x1b[31m"}, "event_id: contains a control character (U+001B) at position 1"),
        ({"meter": "api\u200bcalls"}, "meter: contains an invisible format character (U+200B) at position 3"),
        (
            {"subject_id": "team\ud800"},
            "subject_id: contains a lone surrogate (not encodable as UTF-8) (U+D800) at position 4",
        ),
        ({"customer_id": "c" * 10_240}, "customer_id: longer than 256 characters (10240)"),
        ({"event_id": ""}, "event_id: required field is missing or empty"),
        (
            {"properties": {"model": "a\nb"}},
            "properties.model: contains a control character (U+000A) at position 1",
        ),
    ],
)
def test_a_poison_id_is_refused_with_its_field_and_nothing_is_sent(kafka_config, topics, fields, message):
    event = {"customer_id": "acme", "meter": "api_calls", "quantity": 1, "event_id": "e-1", "timestamp": WHEN}
    event.update(fields)
    with UsageProducer(kafka_config, topics.events) as usage:
        with pytest.raises(InvalidEvent) as error:
            usage.record(**event)
        assert str(error.value).startswith(message)
        assert error.value.reason in ("invalid_field", "missing_field")
        good = {
            "customer_id": "acme",
            "meter": "api_calls",
            "quantity": 1,
            "event_id": "ok",
            "timestamp": WHEN,
        }
        result = usage.record_many([event, good], skip_invalid=True)
        assert result.sent == 1 and [i for i, _ in result.rejected] == [0]
    records = read_topic(kafka_config, topics.events, expect=1, idle_s=1.0)
    assert [key for key, _, _, _ in records] == [b"acme"]


def test_record_without_an_event_id_is_refused(kafka_config, topics):
    with UsageProducer(kafka_config, topics.events) as usage:
        with pytest.raises(InvalidEvent) as error:
            usage.record(customer_id="acme", meter="api_calls", quantity=1, event_id=None, timestamp=WHEN)  # type: ignore[arg-type]
    assert (error.value.field, error.value.reason) == ("event_id", "missing_field")
    assert "pass a stable idempotency key" in str(error.value)
