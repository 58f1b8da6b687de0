"""10k usage events with 5% exact duplicates and 1% re-sent by a restarted producer: counted once each."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metergate.domain.periods import period_for
from metergate.domain.records import ResetPeriod, UsageEvent, aggregate_key
from tests.integration.metering_support import (
    EventProducer,
    Worker,
    aggregate_versions_strictly_increase,
    latest_aggregates,
    publish,
    receipts,
)

pytestmark = pytest.mark.integration

CATALOG = {
    "meters": {
        "api_calls": {"aggregation": "SUM"},
        "requests": {"aggregation": "COUNT"},
        "storage_gb": {"aggregation": "MAX"},
        "active_users": {"aggregation": "UNIQUE_COUNT", "unique_property": "user_id"},
    },
    "features": {"api_calls": {"kind": "metered", "meter": "api_calls"}},
    "plans": {"pro": {"features": {"api_calls": {"included": 1000}}}},
    "subscriptions": {
        f"c{i}": {
            "plan": "pro",
            "anchor": "2024-01-31T00:00:00Z",
            "reset_period": "daily" if i % 2 else "monthly",
        }
        for i in range(0, 40, 3)
    },
}


def test_duplicates_and_resent_events_are_counted_once_with_one_receipt_each(
    kafka_bootstrap, kafka_config, topics, tmp_path
):
    rng = random.Random(7)
    publish(CATALOG, kafka_config, topics)
    now = datetime.now(UTC).replace(microsecond=0)
    meters = ["api_calls", "requests", "storage_gb", "active_users"]
    events = [
        UsageEvent(
            event_id=f"evt-{i}",
            customer_id=f"c{rng.randrange(40)}",
            meter=meters[i % 4],
            quantity=Decimal(rng.randrange(1, 100_000)) / 1000,
            timestamp=now - timedelta(minutes=rng.randrange(0, 60 * 24 * 20)),
            properties={"user_id": f"u{rng.randrange(30)}"},
        )
        for i in range(10_000)
    ]
    copies = rng.sample(events, 500)  # 5% exact duplicates, interleaved later in the stream
    stream = list(events)
    for copy in copies:
        stream.insert(rng.randrange(stream.index(copy) + 1, len(stream) + 1), copy)

    producer = EventProducer(kafka_config, topics)
    worker = Worker(kafka_bootstrap, topics, tmp_path / "worker").start()
    try:
        for event in stream:
            producer.send(event)
        producer.flush()
        restarted = EventProducer(kafka_config, topics)  # a producer that lost track and sends 1% again
        for event in rng.sample(events, 100):
            restarted.send(event)
        restarted.flush()
        ends = producer.end_offsets()
        for partition, offset in restarted.end_offsets().items():
            ends[partition] = max(ends.get(partition, -1), offset)
        worker.wait_committed(kafka_config, topics.events, ends)
    finally:
        assert worker.stop() == 0, worker.tail()

    snapshots = {customer: spec for customer, spec in CATALOG["subscriptions"].items()}
    expected: dict[str, dict] = defaultdict(lambda: {"values": [], "users": set()})
    for event in events:  # the distinct events, computed independently of the worker
        spec = snapshots.get(event.customer_id)
        anchor = datetime(2024, 1, 31, tzinfo=UTC) if spec else None
        reset = ResetPeriod(spec["reset_period"]) if spec else ResetPeriod.MONTHLY
        start = period_for(event.timestamp, anchor, reset).start
        bucket = expected[aggregate_key(event.customer_id, event.meter, start)]
        bucket["values"].append(event.quantity)
        bucket["users"].add(event.properties["user_id"])
        bucket["meter"] = event.meter
    aggregates = latest_aggregates(kafka_config, topics)
    assert set(aggregates) == set(expected)
    for key, bucket in expected.items():
        figure = {
            "api_calls": sum(bucket["values"], Decimal(0)),
            "requests": Decimal(len(bucket["values"])),
            "storage_gb": max(bucket["values"]),
            "active_users": Decimal(len(bucket["users"])),
        }[bucket["meter"]]
        assert (aggregates[key].value, aggregates[key].event_count) == (figure, len(bucket["values"])), key
    assert aggregate_versions_strictly_increase(kafka_config, topics)

    found = receipts(kafka_config, topics)
    assert len(found) == 600
    positions = Counter((r.duplicate.partition, r.duplicate.offset) for r in found)
    assert max(positions.values()) == 1
    first_positions = {}
    for sent in producer.sent:
        first_positions.setdefault(
            (sent.event.customer_id, sent.event.event_id), (sent.partition, sent.offset)
        )
    for receipt in found:
        assert (receipt.first_seen.partition, receipt.first_seen.offset) == first_positions[
            (receipt.customer_id, receipt.event_id)
        ]
