"""A malformed corpus between valid events: each bad record in the DLQ with its reason and its
original bytes, every valid event around them counted, the worker never stalls."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import fastavro
import pytest

from metergate.domain.records import MeterDefinition, UsageEvent
from metergate.wire.codec import MAGIC, codec, registry, schemas_dir
from tests.integration.metering_support import EventProducer, Worker, dead_letters, latest_aggregates, publish

pytestmark = pytest.mark.integration

CATALOG = {
    "meters": {
        "api_calls": {"aggregation": "SUM"},
        "seats": {"aggregation": "UNIQUE_COUNT", "unique_property": "user_id"},
    },
    "features": {},
    "plans": {},
    "subscriptions": {},
}


def event_dict(**fields) -> dict:
    base = {
        "event_id": "x",
        "customer_id": "acme",
        "subject_id": None,
        "meter": "api_calls",
        "quantity": Decimal(1),
        "timestamp": datetime.now(UTC),
        "properties": {},
        "source": None,
    }
    return {**base, **fields}


def with_wide_decimal(datum: dict) -> bytes:
    """A UsageEvent whose quantity exceeds decimal(38, 9): written with a wider precision, which
    Avro's fingerprint (parsing canonical form) does not include, so it carries the real header."""
    raw = json.loads((schemas_dir() / "UsageEvent.avsc").read_text())
    for field in raw["fields"]:
        if field["name"] == "quantity":
            field["type"]["precision"] = 60
    buffer = io.BytesIO()
    buffer.write(MAGIC + registry().current["UsageEvent"].fingerprint)
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(raw), datum)
    return buffer.getvalue()


def test_each_malformed_record_is_dead_lettered_with_its_reason_and_valid_ones_are_counted(
    kafka_bootstrap, kafka_config, topics, tmp_path
):
    publish(CATALOG, kafka_config, topics)
    encode = codec(UsageEvent).encode_dict
    header = MAGIC + registry().current["UsageEvent"].fingerprint
    now = datetime.now(UTC)
    corpus: list[tuple[str, bytes | None]] = [
        ("not_avro", b"definitely not avro"),
        ("not_avro", None),  # a tombstone on the events topic
        ("unknown_schema", MAGIC + b"\x01\x02\x03\x04\x05\x06\x07\x08" + b"\x00"),
        ("unexpected_schema", codec(MeterDefinition).encode(MeterDefinition(meter="m", aggregation="SUM"))),
        ("undecodable", header + b"\xff\xff\xff"),
        ("missing_field", encode(event_dict(event_id="bad-1", customer_id=""))),
        ("missing_field", encode(event_dict(event_id=""))),
        ("invalid_quantity", encode(event_dict(event_id="bad-2", quantity=Decimal(-5)))),
        ("invalid_quantity", with_wide_decimal(event_dict(event_id="bad-3", quantity=Decimal("1e35")))),
        ("unknown_meter", encode(event_dict(event_id="bad-4", meter="nope"))),
        ("future_timestamp", encode(event_dict(event_id="bad-5", timestamp=now + timedelta(days=1)))),
        ("outside_dedup_window", encode(event_dict(event_id="bad-6", timestamp=now - timedelta(days=40)))),
        ("missing_property", encode(event_dict(event_id="bad-7", meter="seats"))),
    ]
    producer = EventProducer(kafka_config, topics)
    valid = []
    for index in range(300):
        event = UsageEvent(
            event_id=f"ok-{index}",
            customer_id="acme",
            meter="api_calls",
            quantity=Decimal(index % 7),
            timestamp=now,
        )
        valid.append(event)
        producer.send(event)
        if index % 20 == 0 and corpus[index // 20 :]:
            reason, value = corpus[index // 20]
            producer.raw(b"acme", value)
    producer.flush()
    worker = Worker(kafka_bootstrap, topics, tmp_path / "worker").start()
    try:
        worker.wait_committed(kafka_config, topics.events, producer.end_offsets())
    finally:
        assert worker.stop() == 0, worker.tail()

    letters = dead_letters(kafka_config, topics)
    by_position = {(d.source.partition, d.source.offset): d for d in letters}
    bad_sent = [s for s in producer.sent if s.event is None]
    assert len(letters) == len(corpus) == len(bad_sent)
    for (reason, value), sent in zip(corpus, bad_sent, strict=True):
        letter = by_position[(sent.partition, sent.offset)]
        assert (letter.reason, letter.original_value, letter.original_key) == (reason, value, b"acme"), (
            letter.message
        )
        assert letter.source.topic == topics.events and letter.service == "metering" and letter.message
    (aggregate,) = latest_aggregates(kafka_config, topics).values()
    assert aggregate.value == sum((e.quantity for e in valid), Decimal(0))
    assert aggregate.event_count == len(valid)
