"""The metering worker is SIGKILLed 20 times under a paced load that keeps it behind (at named
steps of its commit order and at arbitrary moments; once its data directory is deleted too) and
restarted each time: totals, duplicate receipts and limit events are exact, and every record of
usage.events is accounted for once."""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metergate.domain.records import UsageEvent
from metergate.testing.waiting import wait_until
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

KILLS = int(os.environ.get("METERGATE_SOAK_KILLS", "20"))
RATE_PER_S = 1500
CRASH_POINTS = ("outputs_partial", "outputs_sent", "changelog_partial", "changelog_sent", "state_written")


def test_twenty_random_sigkills_under_load_leave_everything_exact(
    kafka_bootstrap, kafka_config, topics, tmp_path
):
    rng = random.Random(20)
    publish(CATALOG, kafka_config, topics)
    now = datetime.now(UTC).replace(microsecond=0)
    producer = EventProducer(kafka_config, topics)
    sent: list[UsageEvent] = []
    duplicates = [0]
    stop = threading.Event()

    def paced_load() -> None:
        started = time.monotonic()
        while not stop.is_set():
            due = int((time.monotonic() - started) * RATE_PER_S)
            while len(sent) < due:
                event = UsageEvent(
                    event_id=f"evt-{len(sent)}",
                    customer_id=f"c{rng.randrange(60)}",
                    meter="api_calls",
                    quantity=Decimal(rng.randrange(1, 4)),
                    timestamp=now - timedelta(seconds=rng.randrange(0, 3600)),
                )
                producer.send(event)
                sent.append(event)
                if rng.random() < 0.03:
                    producer.send(event)
                    sent.append(event)
                    duplicates[0] += 1
            producer.producer.poll(0.01)
        producer.flush()

    data_dir = tmp_path / "worker"
    worker = Worker(
        kafka_bootstrap,
        topics,
        data_dir,
        metrics_port=free_port(),
        batch_size=500,
        session_timeout_s=3,
        heartbeat_interval_s=0.5,
        rebalance_timeout_s=5,
    )
    load = threading.Thread(target=paced_load, name="paced-load")
    watcher = AggregateWatcher(kafka_config, topics)
    kinds: Counter[str] = Counter()
    restarts: list[float] = []
    try:
        load.start()
        for kill in range(KILLS):
            started = time.monotonic()
            if kill % 2 == 0:  # at a named step of the commit order, a few batches in
                point = CRASH_POINTS[(kill // 2) % len(CRASH_POINTS)]
                worker.start(crash_point=point, crash_after_batches=rng.randrange(1, 4))
                assert worker.wait_exit(120) == -9, worker.tail()
                kinds[point] += 1
            else:  # at whatever moment it is once it counts again
                worker.start()
                wait_until(lambda: worker.consumed() > 0, "the restarted worker to count", timeout_s=120)
                restarts.append(time.monotonic() - started)
                # a random moment, told by progress rather than time: once it has counted a random
                # number of records more, up to ~0.5 s of the paced load
                target = worker.consumed() + rng.randrange(1, RATE_PER_S // 2)
                wait_until(
                    lambda target=target: worker.consumed() >= target,
                    "the random kill moment",
                    timeout_s=120,
                    every_s=0.02,
                )
                worker.kill()
                kinds["anywhere"] += 1
            if kill == KILLS // 2:
                shutil.rmtree(data_dir / "rocksdb")
                kinds["data dir deleted"] += 1
        stop.set()
        load.join()
        worker.start()
        watcher.wait_for(expected_totals(sent, ANCHOR), timeout_s=240, workers=[worker])
        assert worker.stop() == 0, worker.tail()
    finally:
        stop.set()
        load.join()
        worker.kill()
        watcher.close()

    print(
        f"{len(sent)} events, kills {dict(kinds)}, restart to counting {min(restarts):.1f}-{max(restarts):.1f} s"
    )
    assert sum(v for k, v in kinds.items() if k != "data dir deleted") == KILLS
    assert len(receipts(kafka_config, topics)) == duplicates[0]
    assert dead_letters(kafka_config, topics) == []
    sent_limits = limit_events(kafka_config, topics)
    assert [n for n, c in Counter(e.limit_event_id for e in sent_limits).items() if c > 1] == []
    first_copies = list({e.event_id: e for e in reversed(sent)}.values())[::-1]
    assert {e.limit_event_id: (e.usage, e.event_id) for e in sent_limits} == expected_limit_events(
        first_copies
    )
    sums = assert_every_record_accounted(kafka_config, topics, worker.changelog)
    distinct = {(e.customer_id, e.event_id) for e in sent}
    assert sums == {
        "accepted": len(distinct),
        "duplicates_counted": duplicates[0],
        "rejected": 0,
        "forwarded": 0,
        "gaps": 0,
    }
