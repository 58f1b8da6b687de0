"""After a rating restart, the credit balance on credits.balances is the ledger's figure and no stale
one wins: rating is SIGKILLed between sending a balance and marking it sent, a grant and more usage
are recorded while it is down, and the restarted relay sends only the newest balance (the unmarked
one is superseded, never re-sent after a newer one). Balances on the topic never go back in ledger
position; the last one (what compaction keeps) and the check's figure are the ledger's. Real broker,
PostgreSQL and rating process."""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from metergate.db.credit_store import grant_credit
from metergate.db.engine import make_engine
from metergate.domain.ledger import Grant
from metergate.domain.records import CreditBalance, Pricing, PricingModel
from metergate.entitlements import Entitlements, EntitlementsSettings
from metergate.settings import KafkaSettings
from metergate.testing.topics import read_topic
from metergate.testing.waiting import wait_until
from metergate.wire.codec import codec
from metergate_services.rating.consumer import FAULT_ENV
from tests.integration.rating_support import (
    GROUP,
    Feed,
    RatingProcess,
    aggregate,
    metered,
    query,
    snapshot,
    stored_offsets,
)

pytestmark = pytest.mark.integration

CUSTOMER = "restart-co"
PRICE = D("0.01")


def published(kafka_config, topics) -> list[tuple[int, D]]:
    """(ledger_position, balance) of every record on credits.balances, in topic order."""
    decode = codec(CreditBalance).decode
    records = [decode(v) for _, v, _, _ in read_topic(kafka_config, topics.balances, idle_s=1.0)]
    assert {r.customer_id for r in records} <= {CUSTOMER}
    return [(r.ledger_position, r.balance) for r in records]


def test_the_balance_published_after_a_rating_restart_is_the_ledgers(
    kafka_bootstrap, kafka_config, topics, database_url, db_schema, metergate_env, tmp_path
):
    engine = make_engine(database_url, db_schema)

    def grant(grant_id: str, amount: str) -> None:
        with engine.begin() as conn:
            grant_credit(
                conn, Grant(grant_id, CUSTOMER, "USD", D(amount), 1, datetime(2026, 1, 1, tzinfo=UTC))
            )

    def ledger() -> tuple[int, D]:
        """(ledger position, balance) as the ledger has them: its newest entry id, its entries' sum."""
        ((position, balance),) = query(
            database_url,
            db_schema,
            "SELECT max(entry_id), sum(amount) FROM credit_ledger WHERE customer_id = :c",
            c=CUSTOMER,
        )
        return position, balance

    def rated(ends: dict[int, int]) -> bool:
        stored = stored_offsets(database_url, db_schema, topics.aggregates)
        return all(stored.get(p, 0) >= end for p, end in ends.items())

    feed = Feed(kafka_config, topics)
    feed.snapshot(
        snapshot(CUSTOMER, [metered("tokens", Pricing(model=PricingModel.PER_UNIT, unit_price=PRICE))])
    )
    grant("first", "10.00")
    granted = ledger()
    assert granted[1] == D("10.00")
    feed.aggregate(aggregate(CUSTOMER, "tokens", "300", 1))  # 3.00 drawn: 7.00 left
    feed.flush()
    env = {
        **metergate_env,
        "METERGATE_RATING_GROUP_ID": GROUP,
        "METERGATE_RATING_POLL_TIMEOUT_S": "0.2",
        "METERGATE_RATING_SNAPSHOT_IDLE_S": "0.3",
        "METERGATE_RATING_SESSION_TIMEOUT_MS": "3000",
        "METERGATE_RATING_LAG_INTERVAL_S": "0",
        "METERGATE_RATING_EXPIRY_INTERVAL_S": "0",
        "METERGATE_RATING_OUTBOX_INTERVAL_S": "0.2",
    }
    rating = RatingProcess(env, tmp_path / "rating.log")
    try:
        # the grant's balance goes out at start; the batch's balance is sent, then the process dies
        # before marking it sent
        rating.start(**{FAULT_ENV: "balance_published@1"})
        assert rating.wait_exit(120) == -signal.SIGKILL, rating.tail()
        after_crash = ledger()
        assert after_crash[1] == D("7.00")
        assert published(kafka_config, topics) == [granted, after_crash]
        assert query(
            database_url,
            db_schema,
            "SELECT ledger_position, balance, published_at IS NOT NULL FROM balance_outbox ORDER BY 1",
        ) == [(*granted, True), (*after_crash, False)]

        # while rating is down: a grant (recorded by another process) and more usage
        grant("top-up", "4.00")
        topped_up = ledger()
        assert topped_up[1] == D("11.00")
        feed.aggregate(aggregate(CUSTOMER, "tokens", "550", 2))  # 2.50 more drawn: 8.50 left
        feed.flush()

        rating.start()
        wait_until(
            lambda: rated(feed.aggregate_ends),
            "the restarted rating to rate version 2",
            timeout_s=60,
            every_s=0.2,
            details=rating.tail,
        )
        final = ledger()
        assert final[1] == D("10.00") - D("3.00") + D("4.00") - D("2.50") == D("8.50")
        wait_until(
            lambda: published(kafka_config, topics)[-1] == final,
            "the newest balance",
            timeout_s=60,
            every_s=0.2,
            details=rating.tail,
        )
        # the unmarked 7.00 was superseded by the top-up's 11.00 and not sent again
        on_topic = published(kafka_config, topics)
        assert on_topic == [granted, after_crash, topped_up, final]
        positions = [position for position, _ in on_topic]
        assert positions == sorted(positions)
        wait_until(
            lambda: (
                query(
                    database_url, db_schema, "SELECT count(*) FROM balance_outbox WHERE published_at IS NULL"
                )
                == [(0,)]
            ),
            "the last balance marked published",
            timeout_s=30,
            every_s=0.2,
            details=rating.tail,
        )
        assert query(
            database_url,
            db_schema,
            "SELECT ledger_position, balance, published_at IS NOT NULL FROM balance_outbox",
        ) == [(*final, True)]
        assert rating.terminate() == 0, rating.tail()

        # and a check reading the topic from the beginning holds the ledger's figure
        check_settings = EntitlementsSettings(
            kafka=KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=topics.prefix), checkpoint_path=None
        )
        with Entitlements(check_settings) as entitlements:
            assert entitlements.wait_caught_up(30)
            wait_until(
                lambda: entitlements.state.credit_balance(CUSTOMER) == final[1],
                "the check's balance",
                timeout_s=30,
                every_s=0.02,
            )
    finally:
        rating.kill()
        engine.dispose()
