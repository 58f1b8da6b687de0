"""Partitions are added to usage.events (the usual way to scale out): the worker detects it at start,
keeps every customer on the partition that holds its state, and counts exactly once what producers
now spread over the new partition count.

The embedded broker does not implement CreatePartitions, so the test builds the situation the
worker meets after a growth directly: usage.events has 7 partitions, metering's state (its
changelog) was built for 4, and the first events were produced the way a 4-partition topic placed
them; later events and producer retries are spread by murmur2 over all 7."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from confluent_kafka import Producer

from metergate.domain.partitioning import partition_for
from metergate.domain.records import UsageEvent
from metergate.kafka.admin import create_topic, ensure_topics
from metergate.kafka.topics import Topics
from metergate.wire.codec import codec
from tests.integration.metering_support import (
    AggregateWatcher,
    EventProducer,
    Worker,
    assert_every_record_accounted,
    dead_letters,
    expected_totals,
    publish,
    receipts,
)
from tests.integration.test_worker_killed_mid_stream_counts_every_event_once import ANCHOR, CATALOG

pytestmark = pytest.mark.integration


def test_partitions_added_to_usage_events_keep_totals_exact(kafka_bootstrap, kafka_config, tmp_path):
    rng = random.Random(8)
    topics = Topics(prefix=f"grow{rng.randrange(10**9)}.")
    ensure_topics(kafka_config, topics, 7)
    changelog = f"{topics.prefix}metergate-metering-state-changelog"
    assert create_topic(kafka_config, changelog, 4, config={"cleanup.policy": "compact,delete"})
    publish(CATALOG, kafka_config, topics)
    now = datetime.now(UTC).replace(microsecond=0)

    def events(start: int, count: int) -> list[UsageEvent]:
        return [
            UsageEvent(
                event_id=f"evt-{i}",
                customer_id=f"c{rng.randrange(60)}",
                meter="api_calls",
                quantity=Decimal(rng.randrange(1, 11)),
                timestamp=now - timedelta(seconds=rng.randrange(0, 3600)),
            )
            for i in range(start, start + count)
        ]

    before, after = events(0, 3000), events(3000, 3000)
    resent = rng.sample(before, 100)  # producer retries after the change land on new partitions
    old = Producer(kafka_config)  # placed as on the 4-partition topic
    for event in before:
        old.produce(
            topics.events,
            codec(UsageEvent).encode(event),
            event.customer_id.encode(),
            partition=partition_for(event.customer_id, 4),
        )
    assert old.flush(30) == 0
    worker = Worker(kafka_bootstrap, topics, tmp_path / "worker", batch_size=500)
    watcher = AggregateWatcher(kafka_config, topics)
    try:
        worker.start()
        watcher.wait_for(expected_totals(before, ANCHOR), workers=[worker])
        assert worker.stop() == 0, worker.tail()

        producer = EventProducer(kafka_config, topics)  # murmur2 over the 7 partitions
        for event in after + resent:
            producer.send(event)
        producer.flush()
        assert {sent.partition for sent in producer.sent} - {0, 1, 2, 3}, "no event on a new partition"

        worker.start()
        watcher.wait_for(expected_totals(before + after, ANCHOR), workers=[worker])
        assert worker.stop() == 0, worker.tail()
    finally:
        worker.kill()
        watcher.close()

    assert "has 7 partitions, metering's state" in worker.tail() and "was built for 4" in worker.tail()
    assert len(receipts(kafka_config, topics)) == len(resent)
    assert dead_letters(kafka_config, topics) == []
    sums = assert_every_record_accounted(kafka_config, topics, worker.changelog)
    assert sums["accepted"] == len(before) + len(after)
    assert sums["duplicates_counted"] == len(resent)
