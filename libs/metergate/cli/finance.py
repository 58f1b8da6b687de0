"""`metergate finance export`: a period's line items for finance, as CSV or JSON lines.

Columns are stable (documented in services/rating/README.md); amounts and quantities are exact
decimal strings, timestamps ISO 8601 UTC. Rows are ordered by customer, period, charge, feature.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import IO, Any

import click

from metergate.cli.reporting import BadSetup

#: The export's columns, in order (finance_line_items view). Add at the end only.
EXPORT_COLUMNS: tuple[str, ...] = (
    "period_start",
    "period_end",
    "customer_id",
    "subscription_id",
    "plan_key",
    "plan_version",
    "charge",
    "feature",
    "meter",
    "status",
    "unpriced_reason",
    "currency",
    "quantity",
    "included_quantity",
    "billable_quantity",
    "pricing_model",
    "unit_price",
    "amount",
    "credits_applied",
    "amount_due",
    "aggregate_version",
    "snapshot_version",
    "event_count",
    "last_event_id",
    "line_key",
    "updated_at",
)

_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def month_bounds(period: str) -> tuple[datetime, datetime]:
    """[first instant of the month, first instant of the next month), UTC, for 'YYYY-MM'."""
    match = _PERIOD.match(period)
    if not match:
        raise BadSetup(f"--period: expected YYYY-MM, e.g. 2026-03, got {period!r}")
    year, month = int(match.group(1)), int(match.group(2))
    if not (1, 1) <= (year, month) <= (9999, 11):  # the month must start and end inside years 1-9999
        raise BadSetup(f"--period: expected a month between 0001-01 and 9999-11, got {period!r}")
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), 1 if month == 12 else month + 1, 1, tzinfo=UTC)
    return start, end


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def export_rows(
    database_url: str, schema: str, period: str, *, include_superseded: bool = False
) -> Iterator[dict[str, str | None]]:
    """Line items whose billing period starts in the month `period` (YYYY-MM), as text columns."""
    from sqlalchemy import text

    from metergate.db.engine import make_engine

    start, end = month_bounds(period)
    where = "" if include_superseded else " AND status <> 'superseded'"
    engine = make_engine(database_url, schema)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    f"SELECT {', '.join(EXPORT_COLUMNS)} FROM finance_line_items "
                    f"WHERE period_start >= :start AND period_start < :end{where} "
                    "ORDER BY customer_id, period_start, charge, feature, line_key"
                ),
                {"start": start, "end": end},
            )
            for row in rows:
                yield {column: _text(value) for column, value in zip(EXPORT_COLUMNS, row, strict=True)}
    finally:
        engine.dispose()


def write_export(rows: Iterator[dict[str, str | None]], out: IO[str], fmt: str) -> int:
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
            count += 1
    else:
        for row in rows:
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
            count += 1
    return count


@click.group("finance")
def finance() -> None:
    """Finance read side: rated line items per billing period."""


@finance.command("export")
@click.option("--period", required=True, help="Billing month, YYYY-MM (periods starting in it).")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, writable=True), help="File to write (default: stdout)."
)
@click.option("--include-superseded", is_flag=True, help="Also rows kept only for audit (amount 0).")
def export(period: str, fmt: str, output: str | None, include_superseded: bool) -> None:
    """Export the line items of a period, one row per (customer, subscription, feature, period, charge)."""
    from metergate.settings import DatabaseSettings

    settings = DatabaseSettings()
    month_bounds(period)  # fail on a bad period before connecting
    rows = export_rows(
        settings.sqlalchemy_url(), settings.schema_name, period, include_superseded=include_superseded
    )
    if output:
        with open(output, "w", newline="") as handle:
            count = write_export(rows, handle, fmt)
        click.echo(f"{count} line item(s) written to {output}", err=True)
    else:
        write_export(rows, sys.stdout, fmt)
