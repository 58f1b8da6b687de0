"""Sales ops provision customers and subscriptions with the real `metergate` CLI against real
PostgreSQL: an upgrade at period end is a new dated version, a grandfathered version is kept until
`subscriptions migrate`, a cancellation ends the terms, every change is audited with the CLI user,
and bad input to every command is one line naming the field, exit code 2.

Dates come from the clock of the run (the CLI reads it once per command); expected period ends are
computed from the anchor the CLI recorded, with the billing-period rule."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from click.testing import CliRunner

from metergate.cli.main import main
from metergate.db import subscription_store as store
from metergate.db.engine import make_engine
from metergate.domain.catalog import PlanVersion
from metergate.domain.periods import period_for
from metergate.domain.records import FeatureEntitlement, FeatureKind, Pricing, PricingModel, ResetPeriod
from metergate.domain.subscriptions import AddOn, PublishedPlan
from tests.integration.rating_support import query

pytestmark = pytest.mark.integration


def calls(included: int, price: str, limit: int | None = None) -> FeatureEntitlement:
    return FeatureEntitlement(
        feature="api_calls",
        kind=FeatureKind.METERED,
        meter="api_calls",
        included=D(included),
        limit=None if limit is None else D(limit),
        pricing=Pricing(model=PricingModel.PER_UNIT, unit_price=D(price)),
    )


EXTRA = AddOn(
    key="extra_calls", currency="USD", fee=D("100.00"), features={"api_calls": calls(5_000_000, "0")}
)


def offer(key: str, fee: str, feature: FeatureEntitlement, version: int = 1, **kw) -> PublishedPlan:  # type: ignore[no-untyped-def]
    return PublishedPlan(
        PlanVersion(key, version, "USD", D(fee), ResetPeriod.MONTHLY, {"api_calls": feature}), **kw
    )


def publish(database_url: str, schema: str, *plans: PublishedPlan) -> None:
    engine = make_engine(database_url, schema)
    try:
        with engine.begin() as conn:
            for plan in plans:
                store.publish_plan_version(conn, plan, who="test", now=datetime.now(UTC))
    finally:
        engine.dispose()


def share(start: datetime, end: datetime) -> str:
    """How a fee line shows a whole period (an anchor with a time of day gives milliseconds)."""
    length = (end - start) // timedelta(milliseconds=1)
    day = 86_400_000
    return f"{length // day}/{length // day} days" if length % day == 0 else f"{length}/{length} ms"


def test_sales_ops_provision_subscriptions_from_the_cli(database_url, db_schema):
    env = {"METERGATE_DATABASE_URL": database_url, "METERGATE_DATABASE_SCHEMA": db_schema}
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(main, list(args), env=env)
        return result.exit_code, result.output

    def run_json(*args: str) -> dict:
        code, out = run(*args, "--json")
        assert code == 0, out
        return json.loads(out)

    publish(
        database_url,
        db_schema,
        offer("growth", "1000.00", calls(10_000_000, "0.0002"), add_ons={"extra_calls": EXTRA}),
        offer("scale", "2000.00", calls(50_000_000, "0.00015")),
        offer(
            "custom",
            "5000.00",
            calls(0, "0.0001", limit=1),
            variable=frozenset({"api_calls.included", "api_calls.limit"}),
        ),
    )
    user = f"cli:{getpass.getuser()}"

    assert run("customers", "create", "acme", "--name", "Acme") == (0, "created: customer acme\n")
    assert run("customers", "create", "acme", "--name", "Acme") == (
        0,
        "exists already (nothing written): customer acme\n",
    )
    assert run("customers", "create", "globex")[0] == 0

    before = datetime.now(UTC)
    created = run_json(
        "subscriptions", "create", "--customer", "acme", "--plan", "growth",
        "--add-on", "extra_calls=2", "--add-on-fee", "extra_calls=80.00",
    )  # fmt: skip
    (first,) = created["versions"]
    anchor = datetime.fromisoformat(first["anchor"])
    assert before - timedelta(milliseconds=1) <= anchor <= datetime.now(UTC)
    assert (first["plan"], first["plan_version"], first["add_ons"]) == ("growth", 1, {"extra_calls": 2})
    assert first["overrides"]["add_on_fees"] == {"extra_calls": "80.00"}
    period_end = period_for(anchor, anchor, ResetPeriod.MONTHLY).end

    # the upgrade needs the add-on gone: Scale does not allow it
    code, out = run("subscriptions", "change", "acme", "--plan", "scale", "--at", "period_end")
    assert (code, out) == (
        2,
        "Error: add_ons.extra_calls: scale v1 does not allow this add-on (allowed: none)\n",
    )
    # a preview first: the versions and the fees of the period the change takes effect in
    next_end = period_for(period_end, anchor, ResetPeriod.MONTHLY).end
    code, out = run(
        "subscriptions", "change", "acme", "--plan", "scale", "--add-on", "extra_calls=0", "--at", "period_end",
        "--dry-run",
    )  # fmt: skip
    assert (code, out.splitlines()[-4:]) == (
        0,
        [
            f"  #2 scale v1  {period_end.isoformat()} .. open  remove_add_on+change_plan",
            f"fees of the period {period_end.isoformat()} .. {next_end.isoformat()}: 1160.00 USD as it is, "
            "2000.00 USD with the change",
            f"  scale v1  base_fee  2000.00 USD  base fee of scale v1 for {share(period_end, next_end)}",
            "nothing written (--dry-run)",
        ],
    )
    upgraded = run_json(
        "subscriptions",
        "change",
        "acme",
        "--plan",
        "scale",
        "--add-on",
        "extra_calls=0",
        "--at",
        "period_end",
    )
    assert [
        (v["number"], v["plan"], v["effective_from"], v["effective_to"], v["add_ons"], v["change"])
        for v in upgraded["versions"]
    ] == [
        (1, "growth", anchor.isoformat(), period_end.isoformat(), {"extra_calls": 2}, "create"),
        (2, "scale", period_end.isoformat(), None, {}, "remove_add_on+change_plan"),
    ]
    code, out = run("subscriptions", "show", "acme")
    assert code == 0
    assert out.splitlines() == [
        f"subscription acme of acme (anchor {anchor.isoformat()}, monthly)",
        f"  #1 growth v1  {anchor.isoformat()} .. {period_end.isoformat()}  create  add-ons extra_calls=2"
        "  overrides extra_calls.fee=80.00",
        f"  #2 scale v1  {period_end.isoformat()} .. open  remove_add_on+change_plan",
    ]

    # grandfathering: growth v2 is published; globex stays on v1 until migrated at its period end
    globex = run_json("subscriptions", "create", "--customer", "globex", "--plan", "growth", "--version", "1")
    globex_anchor = datetime.fromisoformat(globex["versions"][0]["anchor"])
    globex_end = period_for(globex_anchor, globex_anchor, ResetPeriod.MONTHLY).end
    publish(database_url, db_schema, offer("growth", "1100.00", calls(12_000_000, "0.0002"), version=2))
    assert run_json("subscriptions", "show", "globex")["versions"][0]["plan_version"] == 1
    code, out = run(
        "subscriptions", "migrate", "--plan", "growth", "--from", "1", "--to", "2", "--at", "period_end"
    )
    assert (code, out.splitlines()) == (
        0,
        [f"globex: growth v2 from {globex_end.isoformat()}", "1 subscription migrated from growth v1"],
    )
    code, out = run("subscriptions", "migrate", "--plan", "growth", "--from", "1", "--to", "2")
    assert (code, out) == (0, "0 subscriptions migrated from growth v1\n")

    # a cancellation at the moment of the scheduled migration drops it and ends the terms there
    cancelled = run_json("subscriptions", "cancel", "globex", "--at", "period_end")
    assert cancelled["ends_at"] == globex_end.isoformat()
    assert [(v["plan_version"], v["effective_to"]) for v in cancelled["versions"]] == [
        (1, globex_end.isoformat())
    ]

    # a custom plan needs the contract's values
    code, out = run(
        "subscriptions", "create", "--customer", "acme", "--id", "acme-custom", "--plan", "custom"
    )
    assert (code, out) == (
        2,
        "Error: variables.api_calls.included: custom v1 marks it negotiated: give the contract's value "
        "(missing: api_calls.included, api_calls.limit)\n",
    )
    custom = run_json(
        "subscriptions", "create", "--customer", "acme", "--id", "acme-custom", "--plan", "custom",
        "--set", "api_calls.included=60000000", "--set", "api_calls.limit=9e7",
    )  # fmt: skip
    assert custom["versions"][0]["variables"] == {
        "api_calls.included": "60000000",
        "api_calls.limit": "90000000",
    }

    shown = run_json("customers", "show", "acme")
    assert [s["subscription_id"] for s in shown["subscriptions"]] == ["acme", "acme-custom"]
    assert shown["created_by"] == user

    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    bad = [
        (("customers", "show", "nobody"), "customer_id: no customer 'nobody'"),
        (("customers", "create", " "), "customer_id: expected an id of 1-256 characters, got ' '"),
        (
            ("customers", "create", "ac\u200bme"),
            "customer_id: contains an invisible format character (U+200B) at position 2",
        ),
        (
            ("subscriptions", "create", "--customer", "nobody", "--plan", "growth"),
            "customer: no customer 'nobody' (create it first: metergate customers create nobody)",
        ),
        (
            ("subscriptions", "create", "--customer", "acme", "--plan", "nope", "--id", "x"),
            "plan: no published plan 'nope'",
        ),
        (
            (
                "subscriptions",
                "create",
                "--customer",
                "acme",
                "--plan",
                "growth",
                "--version",
                "9",
                "--id",
                "x",
            ),
            "version: plan growth has versions 1, 2, not 9",
        ),
        (
            ("subscriptions", "create", "--customer", "acme", "--plan", "growth"),
            "subscription_id: 'acme' exists already (change it with `subscriptions change`)",
        ),
        (
            (
                "subscriptions",
                "create",
                "--customer",
                "acme",
                "--plan",
                "growth",
                "--id",
                "x",
                "--add-on",
                "extra_calls=lots",
            ),
            "--add-on: expected a whole quantity >= 0 for extra_calls, such as extra_calls=5, got 'lots'",
        ),
        (
            (
                "subscriptions",
                "create",
                "--customer",
                "acme",
                "--plan",
                "growth",
                "--id",
                "x",
                "--add-on",
                "turbo=1",
            ),
            "add_ons.turbo: growth v2 does not allow this add-on (allowed: none)",
        ),
        (
            (
                "subscriptions",
                "create",
                "--customer",
                "acme",
                "--plan",
                "growth",
                "--id",
                "x",
                "--start",
                "2026-13-01",
            ),
            "--start: expected an ISO 8601 moment with an offset such as 2026-12-01T00:00:00Z, got '2026-13-01'",
        ),
        (
            (
                "subscriptions",
                "create",
                "--customer",
                "acme",
                "--plan",
                "growth",
                "--id",
                "x",
                "--start",
                past,
            ),
            "start: expected now or later",
        ),
        (
            (
                "subscriptions",
                "create",
                "--customer",
                "acme",
                "--plan",
                "growth",
                "--id",
                "x",
                "--base-fee",
                "-5",
            ),
            "--base-fee: expected a number >= 0 such as 900.00, got '-5'",
        ),
        (
            ("subscriptions", "change", "acme-custom", "--set", "api_calls.limit=abc"),
            "variables.api_calls.limit: expected a number >= 0 such as 5000000 or \"2.5\", got 'abc'",
        ),
        (
            ("subscriptions", "change", "acme", "--at", "yesterday", "--base-fee", "1"),
            "--at: expected immediately, period_end or an ISO 8601 moment",
        ),
        (("subscriptions", "change", "acme", "--at", past, "--base-fee", "1"), "at: expected now or later"),
        (("subscriptions", "change", "acme"), "change: nothing to change"),
        (
            ("subscriptions", "change", "acme", "--price", "tokens=1"),
            "overrides.pricing.tokens: expected a metered feature of",
        ),
        (("subscriptions", "show", "nope"), "subscription_id: no subscription 'nope'"),
        (("subscriptions", "cancel", "globex", "--at", "period_end"), "at: the subscription already ends at"),
        (
            ("subscriptions", "migrate", "--plan", "growth", "--from", "1", "--to", "1"),
            "to: expected another version than 1",
        ),
        (
            ("subscriptions", "migrate", "--plan", "nope", "--from", "1", "--to", "2"),
            "plan: no published plan 'nope'",
        ),
    ]
    for args, message in bad:
        code, out = run(*args)
        assert code == 2, (args, out)
        assert out.startswith(f"Error: {message}"), (args, out)
        assert len(out.splitlines()) == 1, (args, out)

    # every change is audited with the CLI user, its before and after
    trail = query(
        database_url,
        db_schema,
        "SELECT who, action, before IS NULL, jsonb_array_length(after) FROM audit_log "
        "WHERE entity = 'subscription' AND entity_id = 'acme' ORDER BY audit_id",
    )
    assert trail == [(user, "create", True, 1), (user, "change", False, 2)]
    audited = run_json("subscriptions", "audit", "acme")
    assert [(row["who"], row["action"], row["after"][-1]["plan"]) for row in audited[:2]] == [
        (user, "create", "growth"),
        (user, "change", "scale"),
    ]
    assert audited[1]["before"] == created["versions"]
    assert query(
        database_url, db_schema, "SELECT action FROM audit_log WHERE entity_id = 'globex' ORDER BY audit_id"
    ) == [("create",), ("create",), ("migrate",), ("cancel",)]  # the customer, then its subscription
    # outbox rows of committed changes, one per version not over (+ one for an end); refused
    # changes wrote none. acme: create 1, upgrade at period end 2 (growth now, scale later);
    # acme-custom 1; globex: create 1, migrate 2, cancel 2 (growth now, the end later)
    assert query(
        database_url,
        db_schema,
        "SELECT split_part(message_key, '|', 1), count(*), count(*) FILTER (WHERE superseded_by IS NULL) "
        "FROM catalog_outbox GROUP BY 1 ORDER BY 1",
    ) == [("acme", 4, 3), ("globex", 5, 2)]

    # an earlier change waits until the scheduled one is unscheduled
    code, out = run("subscriptions", "cancel", "acme")
    assert (code, out) == (
        2,
        f"Error: at: a change is scheduled at {period_end.isoformat()} (remove_add_on+change_plan); "
        "unschedule it (`subscriptions unschedule`) before cancelling earlier\n",
    )
    unscheduled = run_json("subscriptions", "unschedule", "acme")
    assert [(v["plan"], v["effective_to"]) for v in unscheduled["versions"]] == [("growth", None)]
    assert run("subscriptions", "unschedule", "acme") == (2, "Error: at: nothing is scheduled after now\n")

    # the period's fees: growth 1000.00 + 2 x 80.00 (the override) for the whole period
    code, out = run("subscriptions", "fees", "acme", "--period-of", anchor.isoformat())
    assert (code, out.splitlines()) == (
        0,
        [
            f"period {anchor.isoformat()} .. {period_end.isoformat()}",
            f"  growth v1  base_fee  1000.00 USD  base fee of growth v1 for {share(anchor, period_end)}",
            f"  growth v1  add_on:extra_calls  160.00 USD  add-on extra_calls x2 for {share(anchor, period_end)}",
            "total 1160.00 USD",
        ],
    )
    code, out = run(
        "subscriptions", "fees", "globex", "--period-of", (globex_end + timedelta(days=1)).isoformat()
    )
    assert (code, out.splitlines()[-1]) == (0, "nothing in force in this period")


def test_the_installed_command_exits_2_with_one_line(database_url, db_schema):
    command = [os.path.join(os.path.dirname(sys.executable), "metergate"), "subscriptions", "show", "nope"]
    result = subprocess.run(
        command,
        env={**os.environ, "METERGATE_DATABASE_URL": database_url, "METERGATE_DATABASE_SCHEMA": db_schema},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        2,
        "",
        "Error: subscription_id: no subscription 'nope'\n",
    )
