"""A second metering worker joins and leaves (SIGTERM) several times while the first has a backlog:
totals, duplicate receipts and limit events are exact, and every record is accounted for."""

from __future__ import annotations

import random
import signal
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metergate.domain.records import UsageEvent
from metergate.testing.waiting import wait_until
from metergate.wire.codec import codec
from tests.integration.metering_support import (
    AggregateWatcher,
    EventProducer,
    Worker,
    assert_every_record_accounted,
    dead_letters,
    expected_totals,
    free_port,
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

FIRST_BACKLOG = 20_000
#: ~5 s of work for one worker here: the join (~3 s) and the leave happen while it is behind
EACH_JOIN = 100_000
JOINS = 3
#: event numbers of the trickle sent while a join is under way (after every burst's)
TRICKLE_FROM = 10_000_000


def events_of(rng: random.Random, start: int, count: int, now: datetime) -> list[UsageEvent]:
    return [
        UsageEvent(
            event_id=f"evt-{i}",
            customer_id=f"c{rng.randrange(60)}",
            meter="api_calls",
            quantity=Decimal(rng.randrange(1, 4)),
            timestamp=now - timedelta(seconds=rng.randrange(0, 3600)),
        )
        for i in range(start, start + count)
    ]


def test_a_second_worker_joining_and_leaving_under_a_backlog_loses_nothing(
    kafka_bootstrap, kafka_config, topics, tmp_path
):
    rng = random.Random(12)
    publish(CATALOG, kafka_config, topics)
    now = datetime.now(UTC).replace(microsecond=0)
    producer = EventProducer(kafka_config, topics)
    sent: list[UsageEvent] = []
    duplicates = 0

    encode = codec(UsageEvent).encode

    def encoded(batch: list[UsageEvent]) -> list[tuple[bytes, bytes, UsageEvent]]:
        """The records of `batch`, 3% of them twice (a producer retry), encoded ahead of sending."""
        nonlocal duplicates
        records = []
        for event in batch:
            record = (event.customer_id.encode(), encode(event), event)
            records.append(record)
            if rng.random() < 0.03:
                records.append(record)
                duplicates += 1
        return records

    def produce(records: list[tuple[bytes, bytes, UsageEvent]]) -> None:
        for key, value, event in records:
            producer.raw(key, value, event)
            sent.append(event)
        producer.flush()

    def counting(worker: Worker, first_event: int) -> Callable[[], bool]:
        """True once `worker` counts; until then each call sends 200 new events."""
        numbers = iter(range(first_event, 10**9, 200))

        def check() -> bool:
            if worker.consumed() > 0:
                return True
            produce(encoded(events_of(rng, next(numbers), 200, now)))
            return False

        return check

    produce(encoded(events_of(rng, 0, FIRST_BACKLOG, now)))
    first = Worker(kafka_bootstrap, topics, tmp_path / "first", metrics_port=free_port(), batch_size=1000)
    second = Worker(kafka_bootstrap, topics, tmp_path / "second", metrics_port=free_port(), batch_size=1000)
    watcher = AggregateWatcher(kafka_config, topics)
    backlog_at_join = []
    try:
        first.start()
        wait_until(lambda: first.consumed() > 0, "the first worker to start counting", timeout_s=90)
        for join in range(JOINS):
            batch = encoded(events_of(rng, FIRST_BACKLOG + join * EACH_JOIN, EACH_JOIN, now))
            # the first worker is held (SIGSTOP, well inside its session timeout: the burst is
            # encoded before, only sent meanwhile) while the burst lands, so the second one joins a
            # group whose member is far behind
            first.process.send_signal(signal.SIGSTOP)
            try:
                produce(batch)
                backlog_at_join.append(
                    len(sent) - first.committed_count(kafka_config, topics.events, range(4))
                )
                second.start()
            finally:
                first.process.send_signal(signal.SIGCONT)

            # the group holds a join for seconds on the embedded broker: the first may count the
            # whole burst meanwhile, so a trickle of new events gives the second something to count
            # on whichever partitions it gets
            wait_until(
                counting(second, TRICKLE_FROM + join * 100_000),
                "the second worker to take partitions and count",
                timeout_s=120,
                every_s=0.3,
            )
            assert second.stop() == 0, second.tail()
        watcher.wait_for(expected_totals(sent, ANCHOR), workers=[first])
        assert first.stop() == 0, first.tail()
    finally:
        first.kill()
        second.kill()
        watcher.close()

    assert len(sent) >= 100_000
    assert all(backlog >= 10_000 for backlog in backlog_at_join), backlog_at_join  # joined under backlog
    assert len(receipts(kafka_config, topics)) == duplicates
    assert dead_letters(kafka_config, topics) == []
    sent_limits = limit_events(kafka_config, topics)
    assert [n for n, c in Counter(e.limit_event_id for e in sent_limits).items() if c > 1] == []
    distinct = list({(e.customer_id, e.event_id): e for e in sent}.values())
    assert {e.limit_event_id: (e.usage, e.event_id) for e in sent_limits} == expected_limit_events(
        [e for e in _first_copies(sent)]
    )
    sums = assert_every_record_accounted(kafka_config, topics, first.changelog)
    assert sums == {
        "accepted": len(distinct),
        "duplicates_counted": duplicates,
        "rejected": 0,
        "forwarded": 0,
        "gaps": 0,
    }


def _first_copies(sent: list[UsageEvent]) -> list[UsageEvent]:
    """The events in the order their first copy was sent (a customer's events keep that order on
    its partition)."""
    seen: set[str] = set()
    found = []
    for event in sent:
        if event.event_id not in seen:
            seen.add(event.event_id)
            found.append(event)
    return found
