"""Prepaid credit: grant it, expire what is due, read balances (rules: `metergate.domain.ledger`).

Each use case runs in one transaction of the engine it is given and reads the time from the
clock it is given (`now`), so a caller (or a test) decides what "now" is.

- `grant_credits`: record a grant, its `credit_grant` ledger entry and the customer's new balance
  (in `balance_outbox`; the running rating consumer relays it to `credits.balances`, so the
  entitlement check sees the credit without reading PostgreSQL). A grant id is an idempotency
  key: repeating it with the same terms writes nothing (`created` False), with other terms it is
  refused (`GrantError` naming `grant_id`). Without an id, a new one is made.
- `expire_credits`: write the expiry entries of grants whose expiry has passed at `now` (the
  rating consumer does this too, every `METERGATE_RATING_EXPIRY_INTERVAL_S`).
- `credit_balances`: balances per customer and currency, computed from the ledger entries.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Engine

from metergate.db.credit_store import Balance, balances, expire_due, grant_credit
from metergate.db.engine import make_engine
from metergate.domain.ledger import Entry, Grant


@dataclass(frozen=True)
class GrantRequest:
    """What an operator asks for; `grant_id` None: a new grant (a fresh id)."""

    customer_id: str
    amount: Decimal
    currency: str = "USD"
    priority: int = 10  # lower is drawn first
    expires_at: datetime | None = None  # UTC; usage after it cannot draw the grant
    effective_at: datetime | None = None  # UTC; usage before it cannot draw the grant
    grant_id: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class GrantOutcome:
    grant: Grant  # as recorded (the earlier one when the id was already granted)
    created: bool  # False: the same grant was already recorded, nothing written


def new_grant_id() -> str:
    return f"grant-{uuid.uuid4().hex[:12]}"


def grant_credits(
    engine: Engine,
    request: GrantRequest,
    *,
    now: datetime,
    new_id: Callable[[], str] = new_grant_id,
) -> GrantOutcome:
    """Record `request` as a grant made at `now` (raises `GrantError`/`InvalidInput` naming the field)."""
    grant = Grant(
        grant_id=request.grant_id or new_id(),
        customer_id=request.customer_id,
        currency=request.currency,
        amount=request.amount,
        priority=request.priority,
        granted_at=now,
        effective_at=request.effective_at,
        expires_at=request.expires_at,
        description=request.description,
    )
    with engine.begin() as conn:
        result = grant_credit(conn, grant)
    return GrantOutcome(result.grant, result.created)


def expire_credits(engine: Engine, *, now: datetime) -> list[Entry]:
    """Write the expiry entries of grants whose expiry is at or before `now`; returns them."""
    with engine.begin() as conn:
        return expire_due(conn, now)


def credit_balances(engine: Engine, customer_id: str | None = None) -> list[Balance]:
    """Balances per customer and currency (one customer's when `customer_id` is given)."""
    with engine.begin() as conn:
        return balances(conn, customer_id)


@contextmanager
def ledger(database_url: str, schema: str) -> Iterator[Engine]:
    """An engine on the ledger's database for the use cases above, disposed on exit."""
    engine = make_engine(database_url, schema)
    try:
        yield engine
    finally:
        engine.dispose()
