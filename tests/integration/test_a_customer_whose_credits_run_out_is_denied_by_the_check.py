"""A customer whose prepaid credit runs out is denied by the entitlement check, and a new grant lets
it in again: credits granted with `metergate credits grant`, usage through the metering worker and
the rating consumer, the balance reaching the in-process check over credits.balances (no PostgreSQL
on the check's side). Real broker and PostgreSQL; each balance is the figure the pricing gives by
hand and the ledger holds. The dates come from the clock of this run (a daily period around now)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from click.testing import CliRunner

from metergate.cli.credits import credits
from metergate.domain.entitlements import Decision, Reason
from metergate.domain.records import UsageEvent
from metergate.entitlements import Entitlements, EntitlementsSettings
from metergate.settings import KafkaSettings
from metergate.testing.waiting import wait_until
from metergate_services.rating.consumer import RatingConsumer
from tests.integration.metering_support import EventProducer, Worker, publish
from tests.integration.rating_support import query, settings

pytestmark = pytest.mark.integration

CUSTOMER = "drain-co"
INCLUDED = 10
PRICE = D("0.01")


def catalog(anchor: datetime) -> dict:
    return {
        "meters": {"api_calls": {"aggregation": "SUM"}},
        "features": {"api_calls": {"kind": "metered", "meter": "api_calls"}},
        "plans": {
            "prepaid": {
                "currency": "USD",
                "features": {
                    "api_calls": {
                        "included": INCLUDED,
                        "limit": 1000,
                        "enforcement": "hard",
                        "pricing": {"model": "per_unit", "unit_price": str(PRICE)},
                    }
                },
            }
        },
        "subscriptions": {
            CUSTOMER: {"plan": "prepaid", "anchor": anchor.isoformat(), "reset_period": "daily"}
        },
    }


def cost(total: int) -> D:
    """What `total` calls cost in the period: every call beyond the included ones at PRICE."""
    return max(total - INCLUDED, 0) * PRICE


def test_a_customer_whose_credits_run_out_is_denied_and_a_new_grant_lets_it_in(
    kafka_bootstrap, kafka_config, topics, database_url, db_schema, tmp_path
):
    now = datetime.now(UTC).replace(microsecond=0)
    publish(catalog(now - timedelta(hours=1)), kafka_config, topics)
    cli_env = {"METERGATE_DATABASE_URL": database_url, "METERGATE_DATABASE_SCHEMA": db_schema}

    def grant(grant_id: str, amount: str) -> None:
        result = CliRunner().invoke(credits, ["grant", CUSTOMER, amount, "--grant-id", grant_id], env=cli_env)
        assert result.exit_code == 0, result.output

    def ledger_balance() -> D:
        rows = query(
            database_url,
            db_schema,
            "SELECT balance FROM finance_ledger_balances WHERE customer_id = :c",
            c=CUSTOMER,
        )
        return rows[0][0]

    events = EventProducer(kafka_config, topics)
    sent = 0

    def use(calls: int) -> None:
        nonlocal sent
        for _ in range(calls):
            sent += 1
            events.send(
                UsageEvent(
                    event_id=f"call-{sent}",
                    customer_id=CUSTOMER,
                    meter="api_calls",
                    quantity=D(1),
                    timestamp=now - timedelta(minutes=5),
                    source="journey",
                )
            )
        events.flush()

    grant("first", "0.50")
    rating = RatingConsumer(
        settings(
            kafka_bootstrap, topics, database_url, db_schema, group_id="journey-rating", outbox_interval_s=0.2
        )
    )
    rating_thread = threading.Thread(target=rating.run, name="rating", daemon=True)
    worker = Worker(kafka_bootstrap, topics, tmp_path / "worker")
    check_settings = EntitlementsSettings(
        kafka=KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=topics.prefix), checkpoint_path=None
    )
    entitlements = Entitlements(check_settings)
    try:
        rating_thread.start()
        worker.start()
        assert entitlements.wait_caught_up(60)

        def settled(total: int, balance: D) -> Callable[[], Decision | None]:
            """The check once it sees `total` calls and `balance` (what rating published)."""

            def seen() -> Decision | None:
                decision = entitlements.check(CUSTOMER, "api_calls", 1, now=now)
                ok = decision.usage == total and entitlements.state.credit_balance(CUSTOMER) == balance
                return decision if ok else None

            return seen

        # the CLI's grant reaches the check through rating's relay, before any usage
        granted = D("0.50")
        decision = wait_until(
            settled(0, granted), "the first grant on credits.balances", timeout_s=60, every_s=0.02
        )
        assert (decision.has_access, decision.reason) == (True, Reason.OK)

        # 40 calls: 30 beyond the included ones cost 0.30, paid from the credit
        use(40)
        balance = granted - cost(40)
        assert balance == D("0.20")
        decision = wait_until(settled(40, balance), "40 calls rated", timeout_s=90, every_s=0.02)
        assert (decision.has_access, decision.reason) == (True, Reason.OK)
        assert ledger_balance() == balance

        # 25 more: 0.25 more, of which the credit pays what is left; the next call is refused
        use(25)
        balance = max(granted - cost(65), D(0))
        assert balance == 0
        denied = wait_until(settled(65, balance), "65 calls rated", timeout_s=90, every_s=0.02)
        assert (denied.has_access, denied.reason, denied.usage, denied.included) == (
            False,
            Reason.CREDITS_EXHAUSTED,
            D(65),
            D(INCLUDED),
        )
        assert f"credit balance of customer {CUSTOMER!r} is 0" in denied.message
        assert ledger_balance() == 0
        owed = query(
            database_url,
            db_schema,
            "SELECT amount, credits_applied, amount_due FROM finance_line_items WHERE customer_id = :c AND charge = 'usage'",
            c=CUSTOMER,
        )
        assert owed == [(cost(65), granted, cost(65) - granted)]  # 0.55, 0.50 from credit, 0.05 due
        asked = entitlements.check(CUSTOMER, "api_calls", 0, now=now)  # "do I have access at all?"
        assert (asked.has_access, asked.reason) == (True, Reason.OK)

        # a new grant lets it in again; it pays only for usage rated from now on
        grant("top-up", "1.00")
        balance = D("1.00")
        decision = wait_until(
            settled(65, balance), "the top-up on credits.balances", timeout_s=60, every_s=0.02
        )
        assert (decision.has_access, decision.reason) == (True, Reason.OK)

        use(10)
        balance = D("1.00") - (cost(75) - cost(65))
        assert balance == D("0.90")
        decision = wait_until(settled(75, balance), "75 calls rated", timeout_s=90, every_s=0.02)
        assert (decision.has_access, decision.reason) == (True, Reason.OK)
        assert ledger_balance() == balance
    finally:
        entitlements.close()
        rating.stop()
        rating_thread.join(60)
        assert not rating_thread.is_alive(), "rating did not stop"
        if worker.process is not None:
            assert worker.stop() == 0, worker.tail()
