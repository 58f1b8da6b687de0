"""Credit grants, expiry and balances in PostgreSQL (rules in `metergate.domain.ledger`).

Every change to a customer's credit locks its `credit_accounts` row first, so grants, expiry and
the rating consumer's debits for one customer never interleave, whichever process makes them.
Every change also records the customer's new balance in `balance_outbox` in its transaction
(`rating_store.write_entries`); the rating consumer's outbox relay publishes it to
`credits.balances` (rule 9 of `metergate.domain.ledger`), so this module needs no Kafka.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from metergate.db.rating_store import load_credit, write_entries
from metergate.domain.ledger import Entry, Grant, GrantError, Wallet, expire_grants, grant_entry


@dataclass(frozen=True)
class GrantResult:
    grant: Grant
    created: bool  # False: the same grant id was recorded before (nothing written)


def grant_credit(conn: Connection, grant: Grant) -> GrantResult:
    """Record `grant`, its `credit_grant` entry and the customer's new balance (for the relay); a
    repeated grant id is a no-op if identical."""
    entry = grant_entry(grant)  # validates
    conn.execute(
        text(
            "INSERT INTO credit_accounts (customer_id, currency) VALUES (:customer, :currency) "
            "ON CONFLICT (customer_id, currency) DO NOTHING"
        ),
        {"customer": grant.customer_id, "currency": grant.currency},
    )
    load_credit(conn, [grant.customer_id])  # locks the customer's accounts
    existing = conn.execute(
        text(
            "SELECT customer_id, currency, amount, priority, expires_at FROM credit_grants WHERE grant_id = :id"
        ),
        {"id": grant.grant_id},
    ).first()
    if existing is not None:
        same = (
            existing.customer_id,
            existing.currency,
            existing.amount,
            existing.priority,
            existing.expires_at,
        ) == (
            grant.customer_id,
            grant.currency,
            grant.amount,
            grant.priority,
            grant.expires_at,
        )
        if not same:
            raise GrantError(
                f"grant_id: {grant.grant_id!r} was already used for a different grant "
                f"({existing.amount} {existing.currency} to {existing.customer_id}); use a new id",
                field="grant_id",
            )
        return GrantResult(grant, created=False)
    conn.execute(
        text(
            "INSERT INTO credit_grants (grant_id, customer_id, currency, amount, priority, granted_at, "
            "effective_at, expires_at, description, remaining) "
            "VALUES (:grant_id, :customer_id, :currency, :amount, :priority, :granted_at, :effective_at, "
            ":expires_at, :description, 0)"
        ),
        {
            "grant_id": grant.grant_id,
            "customer_id": grant.customer_id,
            "currency": grant.currency,
            "amount": grant.amount,
            "priority": grant.priority,
            "granted_at": grant.granted_at,
            "effective_at": grant.effective_at,
            "expires_at": grant.expires_at,
            "description": grant.description,
        },
    )
    write_entries(conn, [entry])
    return GrantResult(grant, created=True)


def expire_due(conn: Connection, now: datetime) -> list[Entry]:
    """Write the expiry entries of every grant whose `expires_at` has passed (once per grant)."""
    customers = (
        conn.execute(
            text("SELECT DISTINCT customer_id FROM credit_grants WHERE NOT expired AND expires_at <= :now"),
            {"now": now},
        )
        .scalars()
        .all()
    )
    if not customers:
        return []
    entries: list[Entry] = []
    for wallet in load_credit(conn, customers).values():
        entries.extend(expire_grants(wallet, now))
    write_entries(conn, entries)
    return entries


@dataclass(frozen=True)
class Balance:
    customer_id: str
    currency: str
    balance: Decimal
    granted: Decimal
    debited: Decimal
    adjusted: Decimal
    expired: Decimal


def balances(conn: Connection, customer_id: str | None = None) -> list[Balance]:
    """Balances per customer and currency, computed from the entries (the finance view)."""
    where = "" if customer_id is None else "WHERE customer_id = :customer"
    rows = conn.execute(
        text(
            "SELECT customer_id, currency, balance, granted, debited, adjusted, expired "
            f"FROM finance_ledger_balances {where} ORDER BY customer_id, currency"
        ),
        {"customer": customer_id},
    )
    return [Balance(*row) for row in rows]


def wallets(conn: Connection, customers: Sequence[str]) -> dict[tuple[str, str], Wallet]:
    """The customers' wallets (locked for this transaction), as rating sees them."""
    return load_credit(conn, customers)
