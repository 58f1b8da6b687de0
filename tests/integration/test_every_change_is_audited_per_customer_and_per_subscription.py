"""Every change of a customer and of its subscriptions is audited, and readable per customer and
per subscription over the admin API (the real service and an HTTP client) and the CLI, against real
PostgreSQL: who (the API key's name, `cli:<login>`), when (the moment of the change), what, the
entity as JSON before and after, and the values that changed."""

from __future__ import annotations

import getpass
import json
from datetime import datetime

import pytest
from click.testing import CliRunner

from metergate.cli.main import main
from metergate.domain.records import utc_millis
from tests.integration.admin_support import AdminApi
from tests.integration.rating_support import query

pytestmark = pytest.mark.integration


def test_every_change_is_audited_per_customer_and_per_subscription(database_url, db_schema, tmp_path):
    env = {"METERGATE_DATABASE_URL": database_url, "METERGATE_DATABASE_SCHEMA": db_schema}
    runner = CliRunner()
    user = f"cli:{getpass.getuser()}"

    def cli(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(main, list(args), env=env)
        return result.exit_code, result.stdout, result.stderr

    with AdminApi(database_url, db_schema, tmp_path) as api, api.client(api.key("crm", "admin")) as http:
        assert (
            http.post("/v1/features", json={"feature": "api_calls", "kind": "metered", "meter": "api_calls"})
        ).status_code == 201
        plan = {"base_fee": "1000.00", "features": {"api_calls": {"included": 10_000_000}}}
        assert http.post("/v1/plans/growth/versions", json=plan).status_code == 201
        customer = http.post("/v1/customers", json={"customer_id": "acme", "name": "Acme Inc."}).json()
        created = http.post("/v1/subscriptions", json={"customer_id": "acme", "plan": "growth"}).json()
        start = created["versions"][0]["effective_from"]
        code, out, err = cli("subscriptions", "change", "acme", "--base-fee", "900", "--json")
        assert (code, err) == (0, ""), out
        changed = json.loads(out)
        moment = changed["versions"][1]["effective_from"]  # the change's moment: the CLI's now
        code, out, err = cli(
            "subscriptions", "create", "--customer", "acme", "--id", "acme-2", "--plan", "growth"
        )
        assert (code, err) == (0, ""), out
        assert http.post("/v1/customers", json={"customer_id": "globex"}).status_code == 201

        trail = http.get("/v1/customers/acme/audit")
        assert trail.status_code == 200, trail.text
        entries = trail.json()["entries"]
        assert [(e["who"], e["action"], e["entity"], e["entity_id"]) for e in entries] == [
            ("crm", "create", "customer", "acme"),
            ("crm", "create", "subscription", "acme"),
            (user, "change", "subscription", "acme"),
            (user, "create", "subscription", "acme-2"),
        ]  # globex's creation is not acme's
        assert datetime.fromisoformat(entries[0]["at"]) == datetime.fromisoformat(customer["created_at"])
        # versions take effect at the change's moment to the millisecond
        assert utc_millis(datetime.fromisoformat(entries[1]["at"])) == datetime.fromisoformat(start)
        assert utc_millis(datetime.fromisoformat(entries[2]["at"])) == datetime.fromisoformat(moment)
        assert (entries[0]["before"], entries[0]["after"]) == (
            None,
            {"customer_id": "acme", "name": "Acme Inc."},
        )
        assert entries[0]["changes"] == ["customer_id: none -> acme", "name: none -> Acme Inc."]
        # the change: the version in force closed at the moment, a new one from it at 900.00
        assert entries[2]["before"] == created["versions"]
        assert entries[2]["after"] == changed["versions"]
        changes = entries[2]["changes"]
        assert changes[0] == f"0.effective_to: none -> {moment}"
        assert {
            f"1.effective_from: none -> {moment}",
            "1.overrides.base_fee: none -> 900",
            "1.plan: none -> growth",
            "1.change: none -> set_overrides",
        } <= set(changes)
        assert not [c for c in changes if c.startswith("0.") and not c.startswith("0.effective_to")]

        per_subscription = http.get("/v1/subscriptions/acme/audit").json()["entries"]
        assert per_subscription == entries[1:3]

        # the same over the CLI
        code, out, err = cli("customers", "audit", "acme", "--json")
        assert (code, err) == (0, "")
        assert json.loads(out) == entries
        code, out, err = cli("customers", "audit", "acme")
        assert code == 0
        lines = out.splitlines()
        assert lines[:3] == [
            f"{entries[0]['at']}  crm  create customer acme",
            "    customer_id: none -> acme",
            "    name: none -> Acme Inc.",
        ]
        assert f"{entries[2]['at']}  {user}  change subscription acme" in lines
        assert "    1.overrides.base_fee: none -> 900" in lines
        code, out, err = cli("subscriptions", "audit", "acme-2", "--json")
        assert [(e["who"], e["action"]) for e in json.loads(out)] == [(user, "create")]

        # the catalog's own changes are audited too (who published what)
        assert query(
            database_url,
            db_schema,
            "SELECT who, action, entity, entity_id, after->>'kind' FROM audit_log "
            "WHERE entity IN ('feature', 'plan_version') ORDER BY audit_id",
        ) == [
            ("crm", "publish", "feature", "api_calls", "metered"),
            ("crm", "publish", "plan_version", "growth:1", None),
        ]

        # unknown ones: 404 / one line naming the field
        missing = http.get("/v1/customers/ghost/audit")
        assert (missing.status_code, missing.headers["content-type"], missing.json()) == (
            404,
            "application/problem+json",
            {
                "type": "about:blank",
                "title": "Not Found",
                "status": 404,
                "detail": "customer_id: no customer 'ghost'",
                "reason": "not_found",
                "message": "customer_id: no customer 'ghost'",
                "field": "customer_id",
            },
        )
        assert cli("customers", "audit", "ghost") == (2, "", "Error: customer_id: no customer 'ghost'\n")
