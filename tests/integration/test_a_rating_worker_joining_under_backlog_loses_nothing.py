"""A second rating worker joins and leaves (SIGTERM) several times while the first has a backlog of
aggregate updates: line items, ledger, invoices and depletions equal the hand computation, every
record is accounted for exactly once over all the processes, and each credits_depleted event is
published once.

Backlog: 100,000 updates produced before the first worker starts (METERGATE_SOAK=1: 300,000), and
more rounds paced in while the workers rebalance, at once whenever fewer than five rounds wait, so
the backlog never runs dry however fast the workers are."""

from __future__ import annotations

import os
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
PLAN = Plan(customers=6_000 if SOAK else 2_000)  # 11,980 / 3,980 keys per round
UPFRONT_ROUNDS = 25  # 299,500 / 99,500 updates ... plus one more round below
REBALANCES = 4


def _past(progress: Callable[[], int], records: int) -> Callable[[], bool]:
    """A condition: `records` more committed than now."""
    target = progress() + records
    return lambda: progress() >= target


def _next_assignment(process: RatingProcess) -> Callable[[], bool]:
    """A condition: the process's log (appended by every start) shows one more assignment."""
    sessions = process.tail(1_000_000).count("rating: assigned {")
    return lambda: process.tail(1_000_000).count("rating: assigned {") > sessions


def rating_env(metergate_env: dict[str, str]) -> dict[str, str]:
    return {
        **metergate_env,
        "METERGATE_RATING_GROUP_ID": GROUP,
        **CLOCK_ENV,
        "METERGATE_RATING_BATCH_SIZE": "1000",
        "METERGATE_RATING_POLL_TIMEOUT_S": "0.2",
        "METERGATE_RATING_SNAPSHOT_IDLE_S": "0.3",
        "METERGATE_RATING_SESSION_TIMEOUT_S": "3",
        "METERGATE_RATING_LAG_INTERVAL_S": "0",
        "METERGATE_RATING_EXPIRY_INTERVAL_S": "0",
    }


def test_a_rating_worker_joining_under_backlog_loses_nothing(
    kafka_config, topics, database_url, db_schema, metergate_env, tmp_path
):
    feed = LoadFeed(kafka_config, topics, PLAN)
    feed.snapshots()
    for _ in range(UPFRONT_ROUNDS + 1):
        feed.round()
    feed.flush()
    backlog = feed.sent
    assert backlog >= 100_000
    grant_prepaid(database_url, db_schema, PLAN)
    topic = topics.aggregates

    def progress() -> int:
        return committed(database_url, db_schema, GROUP, topic)

    env = rating_env(metergate_env)
    first = RatingProcess(env, tmp_path / "first.log").start()
    second = RatingProcess(env, tmp_path / "second.log")
    # the backlog stays above ~5 rounds, however fast the workers are on this machine
    paced = PacedRounds(
        feed, per_s=4_000, backlog=lambda: feed.sent - progress(), floor=5 * PLAN.keys_per_round
    )
    started = time.monotonic()
    try:
        wait_until(
            lambda: progress() > 0,
            "the first worker to commit",
            timeout_s=60,
            every_s=0.2,
            details=first.tail,
        )
        paced.start()
        behind = []
        for _ in range(REBALANCES):
            assigned = _next_assignment(second)
            second.start()
            wait_until(
                assigned, "the second worker's assignment", timeout_s=60, every_s=0.2, details=second.tail
            )
            wait_until(
                _past(progress, 3_000),
                "progress with two workers",
                timeout_s=60,
                every_s=0.2,
                details=second.tail,
            )
            assert second.terminate(60) == 0, second.tail()
            behind.append(feed.sent - progress())
            wait_until(
                _past(progress, 3_000),
                "progress after the second left",
                timeout_s=60,
                every_s=0.2,
                details=first.tail,
            )
        paced.stop()
        # the first worker had a backlog at every departure of the second
        assert min(behind) > 0, behind
        ends = feed.aggregate_ends()
        wait_until(
            lambda: progress() >= sum(ends.values()),
            "the first worker to catch up",
            timeout_s=120,
            every_s=0.2,
            details=first.tail,
        )
        assert first.terminate(60) == 0, first.tail()
    finally:
        paced.stop()
        first.kill()
        second.kill()
    elapsed = time.monotonic() - started

    want = expected(PLAN, feed.rounds)
    got = written(database_url, db_schema)
    assert got.lines == want.lines
    assert got.ledger == want.ledger
    assert got.invoices == want.invoices
    assert got.depleted == want.depleted and want.depleted

    # accounting: every record consumed once over all the processes, and each one's sum adds up
    runs = accounting(tmp_path / "first.log") + accounting(tmp_path / "second.log")
    assert len(runs) == 1 + REBALANCES
    for run in runs:
        assert run["consumed"] == run["accepted"] + run["duplicate"] + run["rejected"] + run["tombstone"]
    assert sum(run["consumed"] for run in runs) == feed.sent
    assert sum(run["rejected"] + run["tombstone"] for run in runs) == 0

    events = [e for e in limit_events(kafka_config, topics) if e.kind is LimitKind.CREDITS_DEPLETED]
    assert sorted(e.limit_event_id for e in events) == sorted(want.depleted)  # once each
    print(
        f"\nrebalance run: {feed.sent} updates ({backlog} up front), {REBALANCES} joins and leaves, "
        f"backlog at each leave {behind}, {elapsed:.1f} s"
    )
