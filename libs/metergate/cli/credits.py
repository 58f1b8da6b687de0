"""`metergate credits`: prepaid credit grants, expiry and balances.

A shell: it parses arguments, calls the use cases of `metergate.usecases.credits` (rules:
`metergate.domain.ledger`) with the wall clock, and prints one line per outcome or error.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

import click

from metergate.cli.reporting import BadSetup
from metergate.errors import InvalidInput

if TYPE_CHECKING:
    from sqlalchemy import Engine


def _ledger() -> AbstractContextManager[Engine]:
    """The ledger's database as the settings name it (imported here: `--help` needs no database)."""
    from metergate.settings import DatabaseSettings
    from metergate.usecases.credits import ledger

    settings = DatabaseSettings()
    return ledger(settings.sqlalchemy_url(), settings.schema_name)


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
    from metergate.usecases.credits import GrantRequest, grant_credits

    request = GrantRequest(
        customer_id=customer_id,
        amount=amount,
        currency=currency.upper(),
        priority=priority,
        expires_at=_utc(expires_at),
        effective_at=_utc(effective_at),
        grant_id=grant_id,
        description=description,
    )
    try:
        with _ledger() as engine:
            outcome = grant_credits(engine, request, now=datetime.now(UTC))
    except InvalidInput as exc:
        raise BadSetup(str(exc)) from None
    recorded, created = outcome.grant, outcome.created
    verb = "granted" if created else "already granted (nothing written)"
    expiry = recorded.expires_at.isoformat() if recorded.expires_at else "never"
    click.echo(
        f"{verb}: {recorded.grant_id} {recorded.amount} {recorded.currency} to {recorded.customer_id}, "
        f"priority {recorded.priority}, expires {expiry}"
    )


@credits.command("expire")
def expire() -> None:
    """Write the expiry entries of grants whose expiry has passed (the rating consumer does this too)."""
    from metergate.usecases.credits import expire_credits

    with _ledger() as engine:
        entries = expire_credits(engine, now=datetime.now(UTC))
    for entry in entries:
        click.echo(f"expired {entry.grant_id}: {entry.amount} {entry.currency}")
    click.echo(f"{len(entries)} expiry entr{'y' if len(entries) == 1 else 'ies'} written")


@credits.command("balance")
@click.argument("customer_id", required=False)
def balance(customer_id: str | None) -> None:
    """Balances per customer and currency, computed from the ledger entries."""
    from metergate.usecases.credits import credit_balances

    with _ledger() as engine:
        rows = credit_balances(engine, customer_id)
    if not rows:
        click.echo("no credit" + (f" for {customer_id}" if customer_id else ""))
    for row in rows:
        click.echo(
            f"{row.customer_id} {row.currency}: balance {row.balance} "
            f"(granted {row.granted}, debited {row.debited}, adjusted {row.adjusted}, expired {row.expired})"
        )
