"""Two rating workers relay the balance outbox at once (each in its own publisher transaction, rows
claimed FOR UPDATE SKIP LOCKED): the second one never sends a customer's newer balance while the
first still holds an older one, and sends it once that one is published. Every ledger change
records its balance in its own transaction. Real PostgreSQL (no broker involved: what would be
produced is the list `sent`)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from sqlalchemy import Connection

from metergate.db import rating_store
from metergate.db.credit_store import grant_credit
from metergate.db.engine import make_engine
from metergate.domain.ledger import BalanceRow, Grant, balances_to_publish
from tests.integration.rating_support import query

pytestmark = pytest.mark.integration

GRANTED_AT = datetime(2026, 1, 1, tzinfo=UTC)


def test_two_relays_never_publish_a_customers_balances_out_of_order(database_url, db_schema):
    engine = make_engine(database_url, db_schema)
    sent: list[tuple[str, int, D]] = []

    def relay_round(conn: Connection) -> list[tuple[str, int]]:
        """One round of `RatingConsumer._relay_balances` in `conn`'s transaction: what it sends."""
        claimed = rating_store.claim_unpublished_balances(conn)
        held = {(b.customer_id, b.ledger_position): b for b in claimed}
        known = rating_store.recorded_balances(conn, {b.customer_id for b in claimed})
        decision = balances_to_publish(held, known)
        rating_store.drop_balances(conn, decision.superseded)
        sent.extend((c, p, held[(c, p)].balance) for c, p in decision.send)
        return list(decision.send)

    def grant(grant_id: str, amount: str) -> None:
        with engine.begin() as conn:
            grant_credit(conn, Grant(grant_id, "acme", "USD", D(amount), 1, GRANTED_AT))

    try:

        def position(grant_id: str) -> int:
            """The ledger position a grant's balance reflects: its entry's id."""
            ((entry_id,),) = query(
                database_url, db_schema, "SELECT entry_id FROM credit_ledger WHERE grant_id = :g", g=grant_id
            )
            return entry_id

        grant("g1", "10.00")
        p1 = position("g1")
        a = engine.connect()
        a_transaction = a.begin()
        assert relay_round(a) == [("acme", p1)]  # A sends 10.00; its delivery report has not come

        grant("g2", "5.00")  # committed while A holds the older balance
        grant("g3", "2.50")
        p2, p3 = position("g2"), position("g3")
        assert query(
            database_url, db_schema, "SELECT ledger_position, balance FROM balance_outbox ORDER BY 1"
        ) == [(p1, D("10.00")), (p2, D("15.00")), (p3, D("17.50"))]

        with engine.begin() as b:  # B holds 15.00 and 17.50, but A holds the older 10.00
            assert relay_round(b) == []
        assert query(database_url, db_schema, "SELECT count(*) FROM balance_outbox") == [
            (3,)
        ]  # nothing dropped

        rating_store.mark_balances_published(a, [("acme", p1)])  # A's 10.00 delivered
        a_transaction.commit()
        a.close()

        with engine.begin() as b:  # now B sends the newest only; 15.00 is superseded
            assert relay_round(b) == [("acme", p3)]
            rating_store.mark_balances_published(b, [("acme", p3)])
        assert sent == [("acme", p1, D("10.00")), ("acme", p3, D("17.50"))]
        # what is kept: the newest published balance, equal to the ledger's
        assert query(
            database_url,
            db_schema,
            "SELECT ledger_position, balance, published_at IS NOT NULL FROM balance_outbox",
        ) == [(p3, D("17.50"), True)]
        assert query(database_url, db_schema, "SELECT sum(amount) FROM credit_ledger") == [(D("17.50"),)]
        with engine.begin() as conn:  # and nothing is left to send
            assert relay_round(conn) == []
    finally:
        engine.dispose()


def test_known_rows_report_whoever_holds_them(database_url, db_schema):
    """`recorded_balances` sees rows another transaction holds (locked, not yet published)."""
    engine = make_engine(database_url, db_schema)
    try:
        with engine.begin() as conn:
            grant_credit(conn, Grant("g1", "zed", "EUR", D("3.00"), 1, GRANTED_AT))
        holder = engine.connect()
        holder.begin()
        (held,) = rating_store.claim_unpublished_balances(holder)
        with engine.begin() as other:
            assert rating_store.claim_unpublished_balances(other) == []  # SKIP LOCKED
            assert rating_store.recorded_balances(other, ["zed"]) == [
                BalanceRow("zed", held.ledger_position, False)
            ]
        assert (held.customer_id, held.currency, held.balance) == ("zed", "EUR", D("3.00"))
        holder.close()
    finally:
        engine.dispose()
