"""`metergate credits grant` records a grant and its ledger entry once per grant id; bad grants are
refused with the field named; `credits balance` and `credits expire` read and close the ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from click.testing import CliRunner

from metergate.cli.credits import credits
from tests.integration.rating_support import query

pytestmark = pytest.mark.integration


def test_credits_grant_records_a_grant_once(database_url, db_schema):
    runner = CliRunner()
    env = {"METERGATE_DATABASE_URL": database_url, "METERGATE_DATABASE_SCHEMA": db_schema}

    # a day before the clock of this run: `credits expire` (which reads the clock) finds it expired
    expired_on = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(credits, list(args), env=env)
        return result.exit_code, result.output

    code, out = run(
        "grant", "acme", "25.00", "--priority", "2", "--expires-at", expired_on, "--grant-id", "q1"
    )
    assert code == 0, out
    assert out.startswith(f"granted: q1 25.00 USD to acme, priority 2, expires {expired_on}T00:00:00+00:00")
    code, out = run(
        "grant", "acme", "25.00", "--priority", "2", "--expires-at", expired_on, "--grant-id", "q1"
    )
    assert (code, out.split(":")[0]) == (0, "already granted (nothing written)")
    code, out = run("grant", "acme", "30.00", "--grant-id", "q1")
    assert code != 0 and "already used for a different grant" in out
    code, out = run("grant", "acme", "1.001")
    assert code != 0 and "amount: 1.001 has more decimals than USD has minor units" in out
    code, out = run("grant", "acme", "0")
    assert code != 0 and "amount: expected a positive amount" in out
    code, out = run("grant", "acme", "lots")
    assert code != 0 and "expected a decimal amount" in out
    code, out = run("grant", "acme", "500", "--currency", "jpy", "--grant-id", "yen")
    assert code == 0, out

    assert query(database_url, db_schema, "SELECT idempotency_key, amount FROM credit_ledger ORDER BY 1") == [
        ("grant:q1", D("25.00")),
        ("grant:yen", D("500")),
    ]
    code, out = run("balance", "acme")
    assert code == 0
    assert out.splitlines() == [
        "acme JPY: balance 500 (granted 500, debited 0, adjusted 0, expired 0)",
        "acme USD: balance 25.00 (granted 25.00, debited 0, adjusted 0, expired 0)",
    ]
    code, out = run("expire")  # q1 expired yesterday
    assert code == 0 and out.splitlines() == ["expired q1: -25.00 USD", "1 expiry entry written"]
    code, out = run("expire")
    assert out.splitlines()[-1] == "0 expiry entries written"
    assert query(
        database_url, db_schema, "SELECT remaining, expired FROM credit_grants WHERE grant_id = 'q1'"
    ) == [(D("0.00"), True)]
    # each grant and the expiry recorded the customer's balance for rating's relay (credits.balances):
    # at its newest entry's currency, the sum of the entries in it
    assert query(
        database_url,
        db_schema,
        "SELECT currency, balance, published_at FROM balance_outbox ORDER BY ledger_position",
    ) == [("USD", D("25.00"), None), ("JPY", D("500"), None), ("USD", D("0.00"), None)]


def test_the_credit_use_cases_read_the_clock_they_are_given(database_url, db_schema):
    """The same use cases the CLI calls, with the clock injected: a grant is made at `now`, and a
    grant expires when the given clock reaches its expiry, not the machine's."""
    from metergate.usecases.credits import (
        GrantRequest,
        credit_balances,
        expire_credits,
        grant_credits,
        ledger,
    )

    now = datetime.now(UTC).replace(microsecond=0)
    expires_at = now + timedelta(days=30)
    request = GrantRequest("globex", D("12.50"), priority=3, expires_at=expires_at, grant_id="u1")
    with ledger(database_url, db_schema) as engine:
        outcome = grant_credits(engine, request, now=now, new_id=lambda: "never-used")
        assert (outcome.created, outcome.grant.grant_id, outcome.grant.granted_at) == (True, "u1", now)
        again = grant_credits(engine, request, now=now + timedelta(hours=1))
        assert (again.created, again.grant.amount) == (False, D("12.50"))
        fresh = grant_credits(engine, GrantRequest("globex", D("1")), now=now, new_id=lambda: "made-here")
        assert fresh.grant.grant_id == "made-here"

        assert expire_credits(engine, now=expires_at - timedelta(seconds=1)) == []
        (entry,) = expire_credits(engine, now=expires_at)
        assert (entry.grant_id, entry.amount, entry.currency) == ("u1", D("-12.50"), "USD")
        (balance,) = credit_balances(engine, "globex")
        assert (balance.balance, balance.granted, balance.expired) == (D("1"), D("13.50"), D("-12.50"))
