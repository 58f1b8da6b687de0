"""The rating process SIGKILLed between every two steps of its commit order (and once from outside,
mid-batch) and restarted ends with line items, ledger, outboxes and offsets identical to an
uninterrupted run over the same records."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from decimal import Decimal as D

import pytest

from metergate.domain.records import LimitKind
from metergate.testing.waiting import wait_until
from metergate_services.rating.consumer import FAULT_ENV, FAULT_STEPS
from tests.integration.rating_load import accounting
from tests.integration.rating_support import (
    CLOCK_ENV,
    CREDIT_CUSTOMERS,
    GROUP,
    Feed,
    RatingProcess,
    another_schema,
    assert_accounted,
    feed_mixed_usage,
    grant_mixed_credit,
    limit_events,
    run_consumer,
    settings,
    state,
    stored_offsets,
)

pytestmark = pytest.mark.integration


def committed(database_url: str, schema: str, topic: str) -> int:
    return sum(stored_offsets(database_url, schema, topic).values())


def all_committed(database_url: str, schema: str, topic: str, ends: Mapping[int, int]) -> bool:
    stored = stored_offsets(database_url, schema, topic)
    return all(stored.get(p, 0) >= end for p, end in ends.items())


def test_rating_killed_at_any_step_ends_identical_to_an_uninterrupted_run(
    kafka_bootstrap, kafka_config, topics, database_url, db_schema, metergate_env, tmp_path
):
    feed = Feed(kafka_config, topics)
    feed_mixed_usage(feed)
    ends = feed.aggregate_ends
    total = sum(ends.values())

    with another_schema(database_url) as reference:
        grant_mixed_credit(database_url, reference)
        run_consumer(settings(kafka_bootstrap, topics, database_url, reference, batch_size=50), ends)
        expected = state(database_url, reference)
    # each prepaid customer runs out, gets 4.00 back when its gauge falls, and runs out again
    assert len(expected["limit_outbox"]) == 4
    assert sum(1 for row in expected["credit_ledger"] if row[4] == "adjustment") == 2  # the falling gauge
    # and ends with no credit: one balance per customer kept, published (older ones deleted)
    assert expected["balance_outbox"] == [(c, "USD", D("0.00"), True) for c in CREDIT_CUSTOMERS]

    grant_mixed_credit(database_url, db_schema)
    env = {
        **metergate_env,
        "METERGATE_RATING_GROUP_ID": GROUP,
        **CLOCK_ENV,
        "METERGATE_RATING_BATCH_SIZE": "50",
        "METERGATE_RATING_POLL_TIMEOUT_S": "0.2",
        "METERGATE_RATING_SNAPSHOT_IDLE_S": "0.3",
        "METERGATE_RATING_SESSION_TIMEOUT_S": "3",
        "METERGATE_RATING_LAG_INTERVAL_S": "0",
        "METERGATE_RATING_EXPIRY_INTERVAL_S": "0",
    }
    process = RatingProcess(env, tmp_path / "rating.log")
    topic = topics.aggregates

    # killed by itself at each step of the commit order, in its 2nd batch (published: at the first
    # depletion it announces, between sending the event and marking it sent; balance_published:
    # between sending a credit balance and marking it sent; fees_written / fees_committed: in its
    # first fee transaction, before and after its COMMIT: the prepaid customers' March base fees)
    first = ("published", "fees_written", "fees_committed")
    for step in FAULT_STEPS:
        before = committed(database_url, db_schema, topic)
        process.start(**{FAULT_ENV: f"{step}@{1 if step in first else 2}"})
        assert process.wait_exit(120) == -signal.SIGKILL, process.tail()
        after = committed(database_url, db_schema, topic)
        assert after < total, f"{step}: the run finished before the fault fired"
        if step in ("locked", "folded", "dlq_sent", "written"):
            assert after - before <= 50, f"{step}: more than one batch committed"  # the 2nd batch rolled back

    # killed from outside while it works
    process.start()
    start = committed(database_url, db_schema, topic)
    wait_until(
        lambda: committed(database_url, db_schema, topic) >= start + 100,
        "progress",
        timeout_s=60,
        every_s=0.2,
        details=process.tail,
    )
    process.kill()

    # and a last run to the end, stopped cleanly
    last_start = committed(database_url, db_schema, topic)
    process.start()
    wait_until(
        lambda: all_committed(database_url, db_schema, topic, ends),
        "the last run to catch up",
        timeout_s=120,
        every_s=0.2,
        details=process.tail,
    )
    assert process.terminate() == 0, process.tail()
    # the accounting invariant of the one clean run: what it committed, each record under one outcome
    runs = accounting(tmp_path / "rating.log")
    assert len(runs) == 1
    assert_accounted(runs[0], committed(database_url, db_schema, topic) - last_start)

    assert state(database_url, db_schema) == expected
    # every depletion announced (a kill between sending and marking may repeat one: same id)
    announced = {
        e.limit_event_id for e in limit_events(kafka_config, topics) if e.kind is LimitKind.CREDITS_DEPLETED
    }
    assert announced == {f"{c}|credits|USD|credits_depleted|{n}" for c in CREDIT_CUSTOMERS for n in (1, 2)}
