"""Bad input to every admin API operation and every `metergate` command gets one clear line naming
the field and what would be right: over HTTP (the real admin service, a real client, real
PostgreSQL) a 400 `application/problem+json` (RFC 9457) whose `detail` is one line starting with
the field, which `field` names; on the command line exit code 2 and one line on stderr, never a traceback, nothing on
stdout. Each list is checked against the operations of the OpenAPI document and the commands of
the CLI, so a new operation or command without a case here fails this test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal as D
from typing import Any

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from metergate import provisioning
from metergate.cli.main import main
from metergate.db.engine import make_engine
from metergate.db.migrate import upgrade
from metergate.domain.records import FeatureKind, ResetPeriod
from metergate.domain.subscriptions import PriceOverrides
from metergate_services.admin.api import openapi
from tests.integration.admin_support import AdminApi

pytestmark = pytest.mark.integration

LONG = "x" * 300  # ids are 1-256 characters

#: operationId -> (method, path, body, the field the answer names, the start of its message after it)
OPERATIONS: dict[str, tuple[str, str, Any, str, str]] = {
    "listFeatures": ("get", "/v1/features?kind=metered", None, "kind", "unknown query parameter"),
    "publishFeature": (
        "post",
        "/v1/features",
        {"feature": "gauge_feature", "kind": "gauge"},
        "kind",
        "Input should be 'boolean', 'config' or 'metered'",
    ),
    "listPlans": ("get", "/v1/plans?page=2", None, "page", "unknown query parameter"),
    "showPlan": ("get", f"/v1/plans/{LONG}", None, "plan", "longer than 256 characters"),
    "publishPlanVersion": (
        "post",
        "/v1/plans/growth/versions",
        {"base_fee": "-1"},
        "base_fee",
        "expected",
    ),
    "showPlanVersion": (
        "get",
        "/v1/plans/growth/versions/0",
        None,
        "version",
        "expected a whole number >= 1",
    ),
    "listAddOns": ("get", "/v1/add-ons?currency=USD", None, "currency", "unknown query parameter"),
    "publishAddOn": (
        "post",
        "/v1/add-ons",
        {"key": "extra_calls", "fee": 1.5},
        "fee",
        "a fraction must travel as a decimal string",
    ),
    "showAddOn": ("get", "/v1/add-ons/%01", None, "key", ""),
    "createCustomer": ("post", "/v1/customers", {"customer_id": ""}, "customer_id", ""),
    "showCustomer": ("get", f"/v1/customers/{LONG}", None, "customer_id", ""),
    "customerAudit": ("get", "/v1/customers/acme%7F/audit", None, "customer_id", ""),
    "createSubscription": (
        "post",
        "/v1/subscriptions",
        {"customer_id": "acme", "plan": "growth", "start": "2026-13-01T00:00:00Z"},
        "start",
        "",
    ),
    "showSubscription": ("get", f"/v1/subscriptions/{LONG}", None, "subscription_id", ""),
    "changeSubscription": ("post", "/v1/subscriptions/acme/changes", {"at": "tomorrow"}, "at", "expected"),
    "previewChange": (
        "post",
        "/v1/subscriptions/acme/changes:preview",
        {"add_ons": {"extra_calls": -1}},
        "add_ons.extra_calls",
        "Input should be greater than or equal to 0",
    ),
    "cancelSubscription": (
        "post",
        "/v1/subscriptions/acme/cancel",
        {"at": "2020-01-01T00:00:00Z"},
        "at",
        "expected now or later",
    ),
    "unscheduleSubscription": ("post", "/v1/subscriptions/%09acme/unschedule", None, "subscription_id", ""),
    "subscriptionAudit": ("get", "/v1/subscriptions/acme/audit?since=2026-01-01", None, "since", "unknown"),
    "subscriptionFees": (
        "get",
        "/v1/subscriptions/acme/fees?period_of=yesterday",
        None,
        "period_of",
        "expected an RFC 3339 moment",
    ),
}
#: operations that take no input at all
NO_INPUT = {"health"}


def document_operations() -> set[str]:
    return {
        operation["operationId"] for methods in openapi()["paths"].values() for operation in methods.values()
    }


def test_every_operation_of_the_document_has_a_bad_input_case():
    assert document_operations() == set(OPERATIONS) | NO_INPUT


@pytest.fixture(scope="module")
def seeded(database_url) -> Iterator[tuple[str, str]]:
    """A schema with a feature, plan growth v1 and acme subscribed to it (so bad values meet real
    records, not only unknown ones)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    upgrade(database_url, schema)
    engine = make_engine(database_url, schema)
    now = datetime.now(UTC)
    try:
        provisioning.publish_feature(
            engine,
            feature="api_calls",
            kind=FeatureKind.METERED,
            meter="api_calls",
            description=None,
            who="t",
            now=now,
        )
        provisioning.publish_plan_version(
            engine,
            plan="growth",
            version=None,
            currency="USD",
            base_fee=D("1000.00"),
            reset_period=ResetPeriod.MONTHLY,
            features={"api_calls": {"included": D(10_000_000)}},
            who="t",
            now=now,
        )
        provisioning.create_customer(engine, "acme", name=None, who="t", now=now)
        provisioning.create_subscription(
            engine,
            subscription_id="acme",
            customer_id="acme",
            plan="growth",
            version=None,
            start=None,
            anchor=None,
            reset_period=None,
            add_ons={},
            variables={},
            overrides=PriceOverrides(),
            who="t",
            now=now,
        )
        yield database_url, schema
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(scope="module")
def admin(seeded, tmp_path_factory) -> Iterator[tuple[AdminApi, str]]:
    database_url, schema = seeded
    api = AdminApi(database_url, schema, tmp_path_factory.mktemp("admin-bad-input"))
    key = api.key("crm", "admin")
    with api:
        yield api, key


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_bad_input_to_an_admin_operation_is_a_400_naming_the_field(operation, admin):
    api, key = admin
    method, path, body, field, message = OPERATIONS[operation]
    with api.client(key) as http:
        answer = (
            http.request(method.upper(), path, json=body)
            if body is not None
            else http.request(method.upper(), path)
        )
    assert answer.status_code == 400, (operation, answer.text)
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert (problem["field"], problem["reason"]) == (field, "invalid_field"), problem
    assert (problem["type"], problem["status"], problem["title"]) == ("about:blank", 400, "Bad Request")
    assert problem["message"].startswith(f"{field}: {message}"), problem
    assert problem["detail"] == problem["message"]
    assert "\n" not in problem["message"] and "Traceback" not in answer.text


# ---------------------------------------------------------------------------------------------
# the command line

#: command -> (arguments after it, the start of the one line on stderr after "Error: ")
COMMANDS: dict[str, tuple[list[str], str]] = {
    "catalog apply": (["--to", "s3", "CATALOG"], "Invalid value for '--to': 's3' is not one of"),
    "catalog plan": (["CATALOG"], "CATALOG: subscriptions.acme.anchor: expected a date or an ISO 8601"),
    "catalog validate": (["CATALOG"], "CATALOG: subscriptions.acme.anchor: expected a date or an ISO 8601"),
    "credits balance": (["acme", "--currency", "USD"], "No such option: --currency"),
    "credits expire": (["acme"], "Got unexpected extra argument (acme)"),
    "credits grant": (["acme", "-5"], ""),
    "customers audit": ([LONG], "customer_id: "),
    "customers create": (["acme\x07"], "customer_id: "),
    "customers show": ([""], "customer_id: required field is missing or empty"),
    "db upgrade": (
        ["--revision", "9999_nope"],
        "--revision: Can't locate revision identified by '9999_nope'",
    ),
    "demo": (["--data-dir", "FILE"], "Invalid value for '--data-dir': Directory 'FILE' is a file."),
    "dev up": (["--partitions", "0"], "Invalid value for '--partitions': 0 is not in the range 1<=x<=10000."),
    "emit": (
        ["--customer", "acme", "--meter", "api_calls", "--quantity", "lots"],
        "event rejected, nothing sent: quantity: must be a number, got 'lots'",
    ),
    "finance export": (["--period", "2026-13"], "--period: "),
    "keys create": (
        ["--name", "web", "--scope", "root"],
        "Invalid value for '--scope': 'root' is not one of",
    ),
    "keys list": (["--format", "csv"], "No such option: --format"),
    "keys revoke": (["nobody-at-all"], ""),
    "run": (["billing"], "Invalid value for 'SERVICE': 'billing' is not one of 'metering', 'rating'"),
    "subscriptions audit": ([LONG], "subscription_id: "),
    "subscriptions cancel": (
        ["acme", "--at", "yesterday"],
        "--at: expected immediately, period_end or an ISO 8601",
    ),
    "subscriptions change": (
        ["acme", "--add-on", "extra_calls=two"],
        "--add-on: expected a whole quantity >= 0",
    ),
    "subscriptions create": (
        ["--customer", "acme", "--plan", "growth", "--reset-period", "weekly"],
        "Invalid value for '--reset-period': 'weekly' is not one of 'daily', 'monthly', 'yearly'.",
    ),
    "subscriptions fees": (["acme", "--period-of", "2026-02-30"], "--period-of: expected an ISO 8601 moment"),
    "subscriptions migrate": (
        ["--plan", "growth", "--from", "1", "--to", "one"],
        "Invalid value for '--to': 'one' is not a valid integer.",
    ),
    "subscriptions publish": (["--interval-s", "0"], "--interval-s: expected a positive number of seconds"),
    "subscriptions show": (["acme\n"], "subscription_id: contains a control character (U+000A)"),
    "subscriptions unschedule": (["ghost"], "subscription_id: no subscription 'ghost'"),
    "topics create": (["usage.events"], "Got unexpected extra argument (usage.events)"),
    "topics list": (["--all"], "No such option: --all"),
}


def cli_commands() -> set[str]:
    found: set[str] = set()

    def walk(command: click.Command, path: list[str]) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
        else:
            found.add(" ".join(path))

    walk(main, [])
    return found


def test_every_command_of_the_cli_has_a_bad_input_case():
    assert cli_commands() == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_input_to_a_command_is_one_line_naming_the_field(command, seeded, kafka_bootstrap, tmp_path):
    database_url, schema = seeded
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "features: {sso: {kind: boolean}}\nplans: {pro: {features: {sso: true}}}\n"
        "subscriptions: {acme: {plan: pro, anchor: 2024-02-30}}\n"
    )
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    args, expected = COMMANDS[command]
    args = [str(catalog) if a == "CATALOG" else str(a_file) if a == "FILE" else a for a in args]
    expected = expected.replace("CATALOG", str(catalog)).replace("FILE", str(a_file))
    env = {
        "METERGATE_DATABASE_URL": database_url,
        "METERGATE_DATABASE_SCHEMA": schema,
        "METERGATE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "METERGATE_KAFKA_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}.",
        "METERGATE_DATA_DIR": str(tmp_path / "data"),
        "METERGATE_ENTITLEMENTS_KEYS_FILE": str(tmp_path / "keys.json"),
    }
    result = CliRunner().invoke(main, [*command.split(), *args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert (result.exit_code, result.stdout) == (2, ""), (command, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, (command, result.stderr)
    assert lines[0].startswith(f"Error: {expected}"), (command, lines[0])
    print(command, "->", lines[0])  # shown with -s: the lines as a user reads them
