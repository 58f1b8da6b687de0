"""PostgreSQL stops in the middle of a run and comes back: the consumer pauses, retries with backoff,
resumes, and ends exactly where an undisturbed run over the same records ends."""

from __future__ import annotations

import threading

import pytest

from metergate.db.migrate import upgrade
from metergate.embedded.postgres import EmbeddedPostgres
from metergate.testing.waiting import wait_until
from metergate_services.rating.consumer import RatingConsumer
from tests.integration.rating_support import (
    Feed,
    another_schema,
    assert_accounted,
    caught_up,
    feed_mixed_usage,
    grant_mixed_credit,
    run_consumer,
    settings,
    state,
    stored_offsets,
)

pytestmark = pytest.mark.integration

SCHEMA = "rating_restart"


def test_postgres_restarted_mid_run_bills_nothing_twice_and_skips_nothing(
    kafka_bootstrap, kafka_config, topics, database_url, tmp_path
):
    feed = Feed(kafka_config, topics)
    feed_mixed_usage(feed)
    ends = feed.aggregate_ends
    total = sum(ends.values())
    with another_schema(database_url) as reference:
        grant_mixed_credit(database_url, reference)
        run_consumer(settings(kafka_bootstrap, topics, database_url, reference, batch_size=50), ends)
        expected = state(database_url, reference)

    # a PostgreSQL of this test's own, which it stops and starts (never the session's)
    postgres = EmbeddedPostgres(tmp_path / "pg")
    postgres.start()
    try:
        upgrade(postgres.url, SCHEMA)
        grant_mixed_credit(postgres.url, SCHEMA)
        consumer = RatingConsumer(settings(kafka_bootstrap, topics, postgres.url, SCHEMA, batch_size=20))
        failure: list[BaseException] = []

        def consume() -> None:
            try:
                consumer.run(until=caught_up(ends))
            except BaseException as exc:  # reported by the test thread
                failure.append(exc)

        worker = threading.Thread(target=consume, name="rating")
        worker.start()
        try:

            def committed() -> int:
                try:
                    return sum(stored_offsets(postgres.url, SCHEMA, topics.aggregates).values())
                except Exception:
                    return 0

            wait_until(
                lambda: committed() >= 200 or not worker.is_alive(),
                "the first commits",
                timeout_s=90,
                every_s=0.2,
            )
            assert committed() < total, "the run ended before PostgreSQL could be stopped"
            postgres.stop()  # fast shutdown: open transactions roll back, connections drop
            # the outage lasts until the consumer has met it (not a fixed time: under load a fixed
            # pause could end before rating's next write, and the test would prove nothing)
            wait_until(
                lambda: consumer.database_failures > 0 or not worker.is_alive(),
                "rating to meet the outage",
                timeout_s=90,
                every_s=0.2,
            )
            postgres.start()
            worker.join(120)
            assert not worker.is_alive(), "rating did not catch up after PostgreSQL came back"
        finally:
            consumer.stop()
            worker.join(30)
        assert failure == []
        assert consumer.database_failures > 0  # it did notice, and waited
        assert state(postgres.url, SCHEMA) == expected
        assert_accounted(consumer.accounting, total)  # one process, from offset 0: every record once
    finally:
        postgres.stop()
