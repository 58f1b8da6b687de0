"""Usage events that arrive on another partition than their customer's (a null key, a key that is
not the customer id, another partitioner, an explicit partition) are counted exactly once, duplicates
across partitions are caught, and limit events stay exact."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from confluent_kafka import Producer

from metergate.domain.partitioning import partition_for
from metergate.domain.records import UsageEvent
from metergate.wire.codec import codec
from tests.integration.metering_support import (
    AggregateWatcher,
    EventProducer,
    Worker,
    assert_every_record_accounted,
    dead_letters,
    expected_totals,
    limit_events,
    publish,
    receipts,
)
from tests.integration.test_worker_killed_mid_stream_counts_every_event_once import (
    ANCHOR,
    CATALOG,
    expected_limit_events,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4


def test_mis_keyed_null_keyed_and_foreign_partitioned_events_are_counted_once(
    kafka_bootstrap, kafka_config, topics, tmp_path
):
    rng = random.Random(5)
    publish(CATALOG, kafka_config, topics)
    now = datetime.now(UTC).replace(microsecond=0)
    right = EventProducer(kafka_config, topics)  # murmur2 on customer_id, as the SDK
    # librdkafka's default partitioner (crc32), as a client that was not told
    other = Producer({**kafka_config, "linger.ms": 5})
    encode = codec(UsageEvent).encode
    sent: list[
        tuple[UsageEvent, int | None]
    ] = []  # (event, partition it was aimed at; None: the producer's choice)
    copies = 0
    for i in range(6000):
        event = UsageEvent(
            event_id=f"evt-{i}",
            customer_id=f"c{rng.randrange(60)}",
            meter="api_calls",
            quantity=Decimal(rng.randrange(1, 11)),
            timestamp=now - timedelta(seconds=rng.randrange(0, 3600)),
        )
        for _copy in range(2 if rng.random() < 0.05 else 1):  # some sent twice, by different routes
            copies += 1
            way = rng.randrange(5)
            if way == 0:
                right.send(event)
                sent.append((event, None))
            elif way == 1:  # no key at all
                other.produce(topics.events, encode(event), None, partition=rng.randrange(PARTITIONS))
                sent.append((event, -1))
            elif way == 2:  # a key that is not the customer id
                other.produce(topics.events, encode(event), b"tenant-7")
                sent.append((event, -1))
            elif way == 3:  # explicitly on a partition that is not the customer's
                wrong = (partition_for(event.customer_id, PARTITIONS) + 1 + rng.randrange(3)) % PARTITIONS
                other.produce(topics.events, encode(event), event.customer_id.encode(), partition=wrong)
                sent.append((event, wrong))
            else:  # another partitioner on the right key
                other.produce(topics.events, encode(event), event.customer_id.encode())
                sent.append((event, -1))
        other.poll(0)
    right.flush()
    assert other.flush(30) == 0

    events = [event for event, _ in sent]
    worker = Worker(kafka_bootstrap, topics, tmp_path / "worker", batch_size=500)
    watcher = AggregateWatcher(kafka_config, topics)
    try:
        worker.start()
        watcher.wait_for(expected_totals(events, ANCHOR), workers=[worker])
        assert worker.stop() == 0, worker.tail()
    finally:
        worker.kill()
        watcher.close()

    distinct = {(e.customer_id, e.event_id) for e in events}
    assert len(receipts(kafka_config, topics)) == copies - len(distinct)
    assert dead_letters(kafka_config, topics) == []
    sent_limits = limit_events(kafka_config, topics)
    assert [n for n, c in Counter(e.limit_event_id for e in sent_limits).items() if c > 1] == []
    # limit figures depend on the order of a customer's events on its partition, which forwarding
    # changes: compare the set of limit events and that each crossing usage is at least its threshold
    expected = expected_limit_events(list({e.event_id: e for e in events}.values()))
    assert {e.limit_event_id for e in sent_limits} == set(expected)
    sums = assert_every_record_accounted(kafka_config, topics, worker.changelog)
    assert sums["accepted"] == len(distinct)
    assert sums["duplicates_counted"] == copies - len(distinct)
    assert sums["rejected"] == 0 and sums["gaps"] == 0
    # every record read on a partition not its customer's was forwarded once, and counted there
    on_log = records_on_foreign_partitions(kafka_config, topics)
    assert sums["forwarded"] == on_log > 0


def records_on_foreign_partitions(kafka_config, topics) -> int:
    from metergate.testing.topics import read_topic

    found = 0
    for _key, value, partition, _offset in read_topic(kafka_config, topics.events, idle_s=1.0):
        event = codec(UsageEvent).decode(value)
        if partition_for(event.customer_id, PARTITIONS) != partition:
            found += 1
    return found
