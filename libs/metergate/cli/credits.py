"""`metergate credits`: prepaid credit grants, expiry and balances (rules: metergate.domain.ledger)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

import click

from metergate.cli.reporting import BadSetup
from metergate.domain.ledger import Grant
from metergate.errors import InvalidInput


def _database() -> tuple[str, str]:
    from metergate.settings import DatabaseSettings

    settings = DatabaseSettings()
    return settings.sqlalchemy_url(), settings.schema_name


def grant_credits(
    database_url: str,
    schema: str,
    *,
    customer_id: str,
    amount: Decimal,
    currency: str = "USD",
    priority: int = 10,
    expires_at: datetime | None = None,
    effective_at: datetime | None = None,
    grant_id: str | None = None,
    description: str | None = None,
) -> tuple[Grant, bool]:
    """Record a grant (and its `credit_grant` ledger entry); returns (grant, created).

    Repeating a grant id with the same terms is a no-op (created False); with other terms it fails.
    The customer's new balance is recorded in the same transaction; the running rating consumer
    publishes it to `credits.balances` (within `METERGATE_RATING_OUTBOX_INTERVAL_S`), so the
    entitlement check sees the credit without reading PostgreSQL.
    """
    from metergate.db.credit_store import grant_credit
    from metergate.db.engine import make_engine

    grant = Grant(
        grant_id=grant_id or f"grant-{uuid.uuid4().hex[:12]}",
        customer_id=customer_id,
        currency=currency,
        amount=amount,
        priority=priority,
        granted_at=datetime.now(UTC),
        effective_at=effective_at,
        expires_at=expires_at,
        description=description,
    )
    engine = make_engine(database_url, schema)
    try:
        with engine.begin() as conn:
            result = grant_credit(conn, grant)
    finally:
        engine.dispose()
    return result.grant, result.created


class DecimalParam(click.ParamType):
    name = "decimal"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> Decimal:
        if isinstance(value, Decimal):
            return value
        try:
            parsed = Decimal(str(value).strip())
        except InvalidOperation:
            raise BadSetup(f"amount: expected a decimal amount such as 25.00, got {value!r}") from None
        if not parsed.is_finite():
            raise BadSetup(f"amount: expected a finite amount such as 25.00, got {value!r}")
        if parsed <= 0:
            raise BadSetup(
                f"amount: expected a positive amount such as 25.00, got {value} "
                "(credit is taken back by expiry, not by a negative grant)"
            )
        return Decimal(format(parsed, "f"))  # as people write it: 1e3 is 1000, not 1E+3


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@click.group("credits")
def credits() -> None:
    """Prepaid credit: grant it, expire it, see balances (the ledger is append-only)."""


@credits.command("grant", context_settings={"ignore_unknown_options": True})  # -5 is an amount
@click.argument("customer_id")
@click.argument("amount", type=DecimalParam())
@click.option("--currency", default="USD", show_default=True, help="ISO 4217 code; pays charges in it only.")
@click.option("--priority", default=10, show_default=True, help="Lower numbers are drawn first.")
@click.option(
    "--expires-at",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    help="UTC; usage after it cannot draw this grant; what is left then expires.",
)
@click.option(
    "--effective-at",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    help="UTC; usage before it cannot draw this grant (default: any usage rated from now on).",
)
@click.option(
    "--grant-id", help="Idempotency key of the grant (default: a new id). Re-running with it is a no-op."
)
@click.option("--description", help="Why the credit was given (kept on the ledger entry).")
def grant(
    customer_id: str,
    amount: Decimal,
    currency: str,
    priority: int,
    expires_at: datetime | None,
    effective_at: datetime | None,
    grant_id: str | None,
    description: str | None,
) -> None:
    """Grant CUSTOMER_ID prepaid credit of AMOUNT (drawn by usage charges, by priority then earliest expiry).

    The rating consumer publishes the new balance to credits.balances for the entitlement check.
    """
    url, schema = _database()
    try:
        recorded, created = grant_credits(
            url,
            schema,
            customer_id=customer_id,
            amount=amount,
            currency=currency.upper(),
            priority=priority,
            expires_at=_utc(expires_at),
            effective_at=_utc(effective_at),
            grant_id=grant_id,
            description=description,
        )
    except InvalidInput as exc:
        raise BadSetup(str(exc)) from None
    verb = "granted" if created else "already granted (nothing written)"
    expiry = recorded.expires_at.isoformat() if recorded.expires_at else "never"
    click.echo(
        f"{verb}: {recorded.grant_id} {recorded.amount} {recorded.currency} to {recorded.customer_id}, "
        f"priority {recorded.priority}, expires {expiry}"
    )


@credits.command("expire")
def expire() -> None:
    """Write the expiry entries of grants whose expiry has passed (the rating consumer does this too)."""
    from metergate.db.credit_store import expire_due
    from metergate.db.engine import make_engine

    url, schema = _database()
    engine = make_engine(url, schema)
    try:
        with engine.begin() as conn:
            entries = expire_due(conn, datetime.now(UTC))
    finally:
        engine.dispose()
    for entry in entries:
        click.echo(f"expired {entry.grant_id}: {entry.amount} {entry.currency}")
    click.echo(f"{len(entries)} expiry entr{'y' if len(entries) == 1 else 'ies'} written")


@credits.command("balance")
@click.argument("customer_id", required=False)
def balance(customer_id: str | None) -> None:
    """Balances per customer and currency, computed from the ledger entries."""
    from metergate.db.credit_store import balances
    from metergate.db.engine import make_engine

    url, schema = _database()
    engine = make_engine(url, schema)
    try:
        with engine.begin() as conn:
            rows = balances(conn, customer_id)
    finally:
        engine.dispose()
    if not rows:
        click.echo("no credit" + (f" for {customer_id}" if customer_id else ""))
    for row in rows:
        click.echo(
            f"{row.customer_id} {row.currency}: balance {row.balance} "
            f"(granted {row.granted}, debited {row.debited}, adjusted {row.adjusted}, expired {row.expired})"
        )
