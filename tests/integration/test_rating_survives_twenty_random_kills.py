"""Rating SIGKILLed at 20 random moments under a paced load that keeps a backlog, restarted each
time: line items, ledger, invoices and depletions equal the hand computation, and every record is
committed exactly once (stored offsets = the topic's end; each clean run's accounting adds up)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

import pytest

from metergate.domain.records import LimitKind
from metergate.testing.waiting import wait_until
from tests.integration.rating_load import (
    LoadFeed,
    PacedRounds,
    Plan,
    accounting,
    committed,
    expected,
    grant_prepaid,
    written,
)
from tests.integration.rating_support import CLOCK_ENV, GROUP, RatingProcess, limit_events

pytestmark = pytest.mark.integration

SOAK = os.environ.get("METERGATE_SOAK") == "1"
PLAN = Plan(customers=3_000 if SOAK else 1_000)  # 5,980 / 1,980 keys per round
KILLS = 50 if SOAK else 20
SEED = 12


def _past(progress: Callable[[], int], records: int) -> Callable[[], bool]:
    target = progress() + records
    return lambda: progress() >= target


def test_rating_survives_twenty_random_kills(
    kafka_config, topics, database_url, db_schema, metergate_env, tmp_path
):
    chance = random.Random(SEED)
    feed = LoadFeed(kafka_config, topics, PLAN)
    feed.snapshots()
    for _ in range(10):
        feed.round()
    feed.flush()
    grant_prepaid(database_url, db_schema, PLAN)
    topic = topics.aggregates

    def progress() -> int:
        return committed(database_url, db_schema, GROUP, topic)

    env = {
        **metergate_env,
        "METERGATE_RATING_GROUP_ID": GROUP,
        **CLOCK_ENV,
        "METERGATE_RATING_BATCH_SIZE": "500",
        "METERGATE_RATING_POLL_TIMEOUT_S": "0.2",
        "METERGATE_RATING_SNAPSHOT_IDLE_S": "0.2",
        "METERGATE_RATING_SESSION_TIMEOUT_S": "1",  # a killed member's partitions move fast
        "METERGATE_RATING_LAG_INTERVAL_S": "0",
        "METERGATE_RATING_EXPIRY_INTERVAL_S": "0",
    }
    process = RatingProcess(env, tmp_path / "rating.log")
    paced = PacedRounds(feed, per_s=2_500)
    recoveries: list[float] = []
    behind: list[int] = []
    started = time.monotonic()
    try:
        paced.start()
        for _ in range(KILLS):
            restart = time.monotonic()
            first_commit = _past(progress, 1)
            process.start()
            wait_until(
                first_commit, "a commit after the restart", timeout_s=60, every_s=0.2, details=process.tail
            )
            recoveries.append(time.monotonic() - restart)
            wait_until(
                _past(progress, chance.randint(1, 2_500)),
                "progress before the kill",
                timeout_s=60,
                every_s=0.2,
                details=process.tail,
            )
            process.kill()  # SIGKILL, anywhere in the commit order
            behind.append(feed.sent - progress())
        paced.stop()
        assert min(behind) > 0, behind  # a backlog at every kill
        ends = feed.aggregate_ends()
        process.start()
        wait_until(
            lambda: progress() >= sum(ends.values()),
            "the last run to catch up",
            timeout_s=120,
            every_s=0.2,
            details=process.tail,
        )
        assert process.terminate(60) == 0, process.tail()
    finally:
        paced.stop()
        process.kill()
    elapsed = time.monotonic() - started

    assert progress() == feed.sent  # every record committed once: the offsets are the topic's end
    want = expected(PLAN, feed.rounds)
    got = written(database_url, db_schema)
    assert got.lines == want.lines
    assert got.ledger == want.ledger
    assert got.invoices == want.invoices
    assert got.depleted == want.depleted and want.depleted
    runs = accounting(tmp_path / "rating.log")
    assert len(runs) == 1  # only the last run ended cleanly
    run = runs[0]
    assert run["consumed"] == run["accepted"] + run["duplicate"] + run["rejected"] + run["tombstone"]
    # a kill between sending an event and marking it sent may repeat it: the same id, never another
    events = [e for e in limit_events(kafka_config, topics) if e.kind is LimitKind.CREDITS_DEPLETED]
    assert {e.limit_event_id for e in events} == want.depleted
    print(
        f"\nkill run: {feed.sent} updates, {KILLS} SIGKILLs, backlog at the kills {min(behind)}-{max(behind)},"
        f" restart to first commit {min(recoveries):.1f}-{max(recoveries):.1f} s, {len(events)} depletion events"
        f" for {len(want.depleted)} depletions, {elapsed:.1f} s"
    )
