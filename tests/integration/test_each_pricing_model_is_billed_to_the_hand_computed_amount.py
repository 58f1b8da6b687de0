"""Running totals of customers on each pricing model become line items with hand-computed amounts;
finance sees them in the views, the invoice-sync outbox and `metergate finance export`."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal as D

import pytest
from click.testing import CliRunner

from metergate.cli.finance import EXPORT_COLUMNS, finance
from tests.integration.rating_support import (
    APRIL,
    GRADUATED,
    MARCH,
    PACKAGE,
    PER_UNIT,
    VOLUME,
    Feed,
    aggregate,
    metered,
    query,
    run_consumer,
    settings,
    snapshot,
)

pytestmark = pytest.mark.integration

#: customer -> (snapshot features, base fee, currency, running totals sent in order, expected amount)
CASES = {
    "per-unit": (
        [metered("api_calls", PER_UNIT, "1000")],
        "49",
        "USD",
        ["500", "1234"],
        "0.47",
    ),  # 234 x 0.002
    "below-included": ([metered("api_calls", PER_UNIT, "1000")], "0", "USD", ["999"], "0.00"),
    "zero-usage": ([metered("api_calls", PER_UNIT)], "0", "USD", ["0"], "0.00"),
    "package-exact": ([metered("api_calls", PACKAGE)], "0", "USD", ["40", "200"], "30.00"),  # 2 full blocks
    "package-started": ([metered("api_calls", PACKAGE)], "0", "USD", ["201"], "45.00"),
    "graduated-exact": ([metered("api_calls", GRADUATED)], "0", "USD", ["1000"], "100.00"),  # tier 1 only
    # 8000 used, 500 included: 7500 billable = 1000 x 0.10 + (4000 x 0.08 + 5) + 2500 x 0.05
    "graduated-over": ([metered("api_calls", GRADUATED, "500")], "0", "USD", ["8000"], "550.00"),
    "volume-exact": ([metered("api_calls", VOLUME)], "0", "USD", ["5000"], "405.00"),  # 5000 x 0.08 + 5
    "volume-over": ([metered("api_calls", VOLUME)], "0", "USD", ["3000", "5001"], "250.05"),  # 5001 x 0.05
    "yen": ([metered("api_calls", PER_UNIT)], "4900.5", "JPY", ["250"], "1"),  # 0.5 -> 1 yen, half-up
}


def test_each_pricing_model_is_billed_to_the_hand_computed_amount(
    kafka_bootstrap, kafka_config, topics, database_url, db_schema
):
    feed = Feed(kafka_config, topics)
    for customer, (features, base_fee, currency, _, _) in CASES.items():
        feed.snapshot(snapshot(customer, features, base_fee=base_fee, currency=currency))
    for customer, (_, _, _, totals, _) in CASES.items():
        for version, total in enumerate(totals, start=1):
            feed.aggregate(aggregate(customer, "api_calls", total, version))
    feed.flush()

    run_consumer(settings(kafka_bootstrap, topics, database_url, db_schema), feed.aggregate_ends)

    usage = dict(
        query(
            database_url,
            db_schema,
            "SELECT customer_id, amount FROM line_items WHERE charge = 'usage' AND status = 'rated'",
        )
    )
    expected = {customer: D(case[4]) for customer, case in CASES.items()}
    assert usage == expected
    # the amounts are stored as rounded once, to the currency's minor unit
    assert {str(amount) for customer, amount in usage.items() if customer != "yen"} <= {
        f"{value:.2f}" for value in expected.values()
    }
    assert str(usage["yen"]) == "1"

    base_fees = query(
        database_url,
        db_schema,
        "SELECT customer_id, amount, currency, quantity FROM line_items WHERE charge = 'base_fee' ORDER BY 1",
    )
    assert base_fees == [("per-unit", D("49.00"), "USD", D(1)), ("yen", D("4901"), "JPY", D(1))]

    rated = query(
        database_url,
        db_schema,
        "SELECT quantity, included_quantity, billable_quantity, unit_price, aggregate_version, detail"
        " FROM finance_rated_usage WHERE customer_id = 'per-unit'",
    )
    assert rated == [(D("1234"), D("1000"), D("234"), D("0.002"), 2, "234 x 0.002")]

    invoices = dict(
        (customer, (total, due, count))
        for customer, total, due, count in query(
            database_url,
            db_schema,
            "SELECT customer_id, amount_total, amount_due, line_count FROM invoice_sync"
            " WHERE period_start = :start AND status = 'pending'",
            start=MARCH,
        )
    )
    assert invoices["per-unit"] == (D("49.47"), D("49.47"), 2)
    assert invoices["yen"] == (D("4902"), D("4902"), 2)
    assert invoices["graduated-over"] == (D("550.00"), D("550.00"), 1)
    assert len(invoices) == len(CASES)

    # finance export: stable columns, exact decimals, the month's periods only
    runner = CliRunner()
    env = {"METERGATE_DATABASE_URL": database_url, "METERGATE_DATABASE_SCHEMA": db_schema}
    result = runner.invoke(finance, ["export", "--period", "2026-03", "--format", "csv"], env=env)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert tuple(rows[0]) == EXPORT_COLUMNS
    assert len(rows) == len(CASES) + 2  # one usage line each + two base fees
    per_unit = next(r for r in rows if r["customer_id"] == "per-unit" and r["charge"] == "usage")
    assert (per_unit["amount"], per_unit["quantity"], per_unit["period_start"], per_unit["period_end"]) == (
        "0.47",
        "1234",
        MARCH.isoformat(),
        APRIL.isoformat(),
    )
    result = runner.invoke(finance, ["export", "--period", "2026-03", "--format", "jsonl"], env=env)
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [list(line) for line in lines] == [list(EXPORT_COLUMNS)] * len(rows)
    assert {line["line_key"] for line in lines} == {row["line_key"] for row in rows}
    empty = runner.invoke(finance, ["export", "--period", "2026-04", "--format", "jsonl"], env=env)
    assert empty.exit_code == 0 and empty.output == ""
    bad = runner.invoke(finance, ["export", "--period", "2026-13"], env=env)
    assert bad.exit_code != 0 and "expected YYYY-MM" in bad.output
