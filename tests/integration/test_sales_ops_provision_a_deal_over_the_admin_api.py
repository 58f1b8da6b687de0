"""Sales ops provision a deal over the admin API (the real service, a real HTTP client, real
PostgreSQL): features, an add-on and plan versions are published (never edited), a customer is
subscribed with an add-on at a negotiated fee, an upgrade on day 15 is previewed to the cent and
nothing is written, then made; a cancellation is scheduled and dropped; every change is audited
with the API key's name; keys without the admin scope are refused; bad input names the field.

Dates come from the clock of the run: the deal starts on the first of next month (UTC), so the
period and the proration are computed here from the calendar, independently of the service."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP
from decimal import Decimal as D

import pytest

from metergate.domain.periods import period_for
from metergate.domain.records import ResetPeriod
from tests.integration.admin_support import AdminApi

pytestmark = pytest.mark.integration

CENT = D("0.01")


def cents(amount: D) -> str:
    return str(amount.quantize(CENT, rounding=ROUND_HALF_UP))


def next_month(now: datetime) -> tuple[datetime, datetime, int]:
    """(first moment of next month, first moment of the month after, days of next month)."""
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    days = calendar.monthrange(year, month)[1]
    start = datetime(year, month, 1, tzinfo=UTC)
    return start, start + timedelta(days=days), days


def calls(included: int, limit: int, price: str) -> dict[str, object]:
    return {
        "included": included,
        "limit": limit,
        "enforcement": "soft",
        "pricing": {"model": "package", "unit_price": price, "package_size": 1000},
    }


def test_sales_ops_provision_a_deal_over_the_admin_api(database_url, db_schema, tmp_path):
    with AdminApi(database_url, db_schema, tmp_path) as api:
        admin_key = api.key("sales-ops-tool", "admin")
        check_key = api.key("web", "check", "ingest")

        # closed to strangers: 401 without a (valid) key, 403 without the admin scope
        with api.client("") as anonymous:
            anonymous.headers.pop("X-API-Key")
            assert anonymous.get("/v1/plans").status_code == 401
        with api.client("mgk_0000000000000000_" + "0" * 64) as wrong:
            assert wrong.get("/v1/plans").status_code == 401
        with api.client(check_key) as web:
            refused = web.post("/v1/customers", json={"customer_id": "acme"})
            assert refused.status_code == 403
            assert refused.json()["message"] == "the key 'web' lacks the 'admin' scope"

        with api.client(admin_key) as http:
            # the catalog: features, an add-on, two plans (published once, never edited)
            for body in (
                {"feature": "api_calls", "kind": "metered", "meter": "api_calls"},
                {"feature": "sso", "kind": "boolean"},
            ):
                assert http.post("/v1/features", json=body).status_code == 201
            assert (
                http.post("/v1/features", json={"feature": "sso", "kind": "boolean"}).json()["created"]
                is False
            )
            extra = {
                "key": "extra_calls",
                "currency": "USD",
                "fee": "100.00",
                "features": {"api_calls": {"included": 5_000_000, "limit": 5_000_000}},
            }
            assert http.post("/v1/add-ons", json=extra).status_code == 201
            growth = {
                "currency": "USD",
                "base_fee": "1000.00",
                "features": {"api_calls": calls(10_000_000, 20_000_000, "0.20"), "sso": {"enabled": False}},
                "add_ons": ["extra_calls"],
            }
            published = http.post("/v1/plans/growth/versions", json=growth)
            assert published.status_code == 201, published.text
            assert (published.json()["version"], published.json()["created"]) == (1, True)
            again = http.post("/v1/plans/growth/versions", json={**growth, "version": 1})
            assert (again.status_code, again.json()["created"]) == (200, False)
            edited = http.post(
                "/v1/plans/growth/versions", json={**growth, "version": 1, "base_fee": "900.00"}
            )
            assert edited.status_code == 409
            assert edited.json()["message"] == (
                "plans.growth.versions.1: published already with other terms; published versions are never "
                "edited: publish version 2"
            )
            scale = {
                **growth,
                "base_fee": "2500.00",
                "features": {"api_calls": calls(50_000_000, 100_000_000, "0.15"), "sso": {}},
            }
            assert http.post("/v1/plans/scale/versions", json=scale).status_code == 201
            shown = http.get("/v1/plans/growth/versions/1").json()
            assert (shown["base_fee"], shown["features"]["api_calls"]["included"]) == ("1000.00", "10000000")
            assert shown["features"]["api_calls"]["pricing"]["package_size"] == "1000"
            assert [p["plan"] for p in http.get("/v1/plans").json()["plans"]] == ["growth", "scale"]
            assert http.get("/v1/plans/growth").json()["versions"] == [1]

            # the deal: a customer on growth from the first of next month, 2 extra-call packs at 80.00
            start, end, days = next_month(datetime.now(UTC))
            created = http.post("/v1/customers", json={"customer_id": "acme", "name": "Acme Inc."})
            assert created.status_code == 201 and created.json()["created_by"] == "sales-ops-tool"
            deal = {
                "customer_id": "acme",
                "plan": "growth",
                "start": start.isoformat(),
                "add_ons": {"extra_calls": 2},
                "overrides": {"add_on_fees": {"extra_calls": "80.00"}},
            }
            subscribed = http.post("/v1/subscriptions", json=deal)
            assert subscribed.status_code == 201, subscribed.text
            (version,) = subscribed.json()["versions"]
            assert (version["plan"], version["plan_version"], version["add_ons"]) == (
                "growth",
                1,
                {"extra_calls": 2},
            )
            assert datetime.fromisoformat(version["effective_from"]) == start
            assert version["overrides"]["add_on_fees"] == {"extra_calls": "80.00"}

            fees = http.get("/v1/subscriptions/acme/fees", params={"period_of": start.isoformat()}).json()
            assert datetime.fromisoformat(fees["period_end"]) == end
            assert [(line["feature"], line["amount"]) for line in fees["lines"]] == [
                ("base_fee", "1000.00"),
                ("add_on:extra_calls", "160.00"),  # the negotiated 80.00 x 2, not the list 100.00
            ]
            assert fees["total"] == "1160.00"

            # an upgrade to scale on day 15, previewed: the base fee is prorated by days in force
            day_15 = start + timedelta(days=14)
            upgrade = {
                "plan": "scale",
                "add_ons": {"extra_calls": 2},
                "overrides": {"add_on_fees": {"extra_calls": "80.00"}},
                "at": day_15.isoformat(),
            }
            preview = http.post("/v1/subscriptions/acme/changes:preview", json=upgrade)
            assert preview.status_code == 200, preview.text
            before, after = preview.json()["before"], preview.json()["after"]
            assert before["total"] == "1160.00"
            old, new = D(14) / D(days), D(days - 14) / D(days)
            expected = [
                ("growth", "base_fee", cents(D(1000) * old)),
                ("growth", "add_on:extra_calls", cents(D(160) * old)),
                ("scale", "base_fee", cents(D(2500) * new)),
                ("scale", "add_on:extra_calls", cents(D(160) * new)),
            ]
            assert [(line["plan"], line["feature"], line["amount"]) for line in after["lines"]] == expected
            assert after["total"] == str(sum(D(amount) for _, _, amount in expected))
            assert len(http.get("/v1/subscriptions/acme").json()["versions"]) == 1  # nothing written

            changed = http.post("/v1/subscriptions/acme/changes", json=upgrade)
            assert changed.status_code == 200, changed.text
            first, second = changed.json()["versions"]
            assert datetime.fromisoformat(first["effective_to"]) == day_15
            assert (second["plan"], datetime.fromisoformat(second["effective_from"])) == ("scale", day_15)
            billed = http.get("/v1/subscriptions/acme/fees", params={"period_of": day_15.isoformat()}).json()
            assert billed["total"] == after["total"]

            # acme starts next month: there is nothing but scheduled terms to drop
            early = http.post("/v1/subscriptions/acme/unschedule")
            assert (early.status_code, early.json()["field"]) == (400, "subscription_id")

            # a cancellation at period end of a subscription in force, then dropped
            assert http.post("/v1/customers", json={"customer_id": "globex"}).status_code == 201
            running = http.post("/v1/subscriptions", json={"customer_id": "globex", "plan": "growth"}).json()
            anchor = datetime.fromisoformat(running["versions"][0]["anchor"])
            period_end = period_for(anchor, anchor, ResetPeriod.MONTHLY).end
            cancelled = http.post("/v1/subscriptions/globex/cancel", json={"at": "period_end"})
            assert cancelled.status_code == 200, cancelled.text
            assert datetime.fromisoformat(cancelled.json()["ends_at"]) == period_end
            dropped = http.post("/v1/subscriptions/globex/unschedule")
            assert dropped.status_code == 200, dropped.text
            assert dropped.json()["ends_at"] is None
            globex_trail = http.get("/v1/subscriptions/globex/audit").json()["entries"]
            assert [e["action"] for e in globex_trail] == ["create", "cancel", "unschedule"]

            trail = http.get("/v1/subscriptions/acme/audit").json()["entries"]
            assert [(e["who"], e["action"]) for e in trail] == [
                ("sales-ops-tool", "create"),
                ("sales-ops-tool", "change"),
            ]
            assert [len(e["after"]) for e in trail] == [1, 2]
            assert trail[1]["before"] == [version]  # before and after as JSON
            customer = http.get("/v1/customers/acme").json()
            assert [s["subscription_id"] for s in customer["subscriptions"]] == ["acme"]

            # bad input: one line naming the field, 4xx, nothing written
            bad = [
                (
                    "post",
                    "/v1/subscriptions",
                    {**deal, "customer_id": "nobody"},
                    404,
                    "customer",
                    "customer: no customer 'nobody' (create it first: metergate customers create nobody)",
                ),
                (
                    "post",
                    "/v1/subscriptions",
                    {"plan": "growth"},
                    400,
                    "customer_id",
                    "customer_id: required field is missing",
                ),
                (
                    "post",
                    "/v1/subscriptions",
                    {**deal, "subscription_id": "acme"},
                    409,
                    "subscription_id",
                    None,
                ),
                (
                    "post",
                    "/v1/subscriptions/acme/changes",
                    {"add_ons": {"extra_calls": 1}, "overrides": {"add_on_fees": {"extra_calls": 7.5}}},
                    400,
                    "overrides.add_on_fees.extra_calls",
                    None,
                ),
                (
                    "post",
                    "/v1/subscriptions/acme/changes",
                    {"plan": "growth", "colour": "red"},
                    400,
                    "colour",
                    "colour: unknown field",
                ),
                (
                    "post",
                    "/v1/subscriptions/acme/changes",
                    {"plan": "growth", "at": "tomorrow"},
                    400,
                    "at",
                    None,
                ),
                ("post", "/v1/subscriptions/acme/changes", {}, 400, "change", None),
                (
                    "post",
                    "/v1/subscriptions/ghost/cancel",
                    {},
                    404,
                    "subscription_id",
                    "subscription_id: no subscription 'ghost'",
                ),
                (
                    "post",
                    "/v1/plans/growth/versions",
                    {**growth, "features": {"storage": {}}},
                    400,
                    "features.storage",
                    None,
                ),
                (
                    "post",
                    "/v1/plans/growth/versions",
                    {**growth, "features": {"api_calls": {"limit": -5}}},
                    400,
                    "features.api_calls.limit",
                    None,
                ),
                (
                    "get",
                    "/v1/plans/growth/versions/7",
                    None,
                    404,
                    "version",
                    "version: plan growth has versions 1, not 7",
                ),
                ("get", "/v1/plans/growth/versions/x", None, 400, "version", None),
                ("get", "/v1/plans/enterprise", None, 404, "plan", "plan: no published plan 'enterprise'"),
                ("post", "/v1/customers", {"customer_id": "acme", "name": "Other"}, 409, "customer_id", None),
            ]
            bad.append(
                (
                    "post",
                    "/v1/customers",
                    {"customer_id": "initech", "name": "Ini\x00tech"},
                    400,
                    "name",
                    "name: contains a NUL character (U+0000) at position 3: give text without it",
                )
            )
            for method, path, body, status, field, message in bad:
                answer = http.request(method.upper(), path, json=body)
                assert (answer.status_code, answer.json().get("field")) == (status, field), (
                    path,
                    body,
                    answer.text,
                )
                assert "\n" not in answer.json()["message"]
                if message is not None:
                    assert answer.json()["message"] == message
            for moment in ("2026-13-01", "9999-12-31T23:00:00Z", "2026-12-01T00:00:00"):
                fees_bad = http.get("/v1/subscriptions/acme/fees", params={"period_of": moment})
                assert (fees_bad.status_code, fees_bad.json()["field"]) == (400, "period_of"), fees_bad.text
            far = http.post(
                "/v1/subscriptions", json={**deal, "subscription_id": "x", "start": "9999-12-31T00:00:00Z"}
            )
            assert (far.status_code, far.json()["message"]) == (
                400,
                "start: expected a moment from 1970 to before 9000 (got '9999-12-31T00:00:00Z')",
            )
            assert len(http.get("/v1/subscriptions/acme/audit").json()["entries"]) == 2
