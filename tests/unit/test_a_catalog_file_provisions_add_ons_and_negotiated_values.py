"""A catalog file provisions add-ons (their features and fee per unit, the plan versions that allow
them), the negotiated entitlements of a custom plan and each contract's add-ons, values and add-on
fees (pure): the snapshots carry the resolved terms, every error names its path in the file, the
plan diff lists what would change, and files written before these sections resolve as they did."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest

from metergate.cli.catalog import load_catalog
from metergate.domain.catalog import parse_catalog
from metergate.domain.catalog_diff import Action, Subscribed, diff_catalog, target_of
from metergate.domain.records import Enforcement
from metergate.domain.subscriptions import PriceOverrides
from metergate.errors import CatalogError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def document() -> dict[str, Any]:
    return {
        "meters": {"api_calls": {"aggregation": "SUM"}, "active_users": {"aggregation": "COUNT"}},
        "features": {
            "api_calls": {"kind": "metered"},
            "seats": {"kind": "metered", "meter": "active_users"},
            "sso": {"kind": "boolean"},
            "retention_days": {"kind": "config"},
        },
        "add_ons": {
            "extra_calls": {
                "fee": "100.00",
                "max_quantity": 5,
                "features": {"api_calls": {"included": 5_000_000, "limit": 5_000_000}},
            },
            "sso_pack": {"fee": "50.00", "features": {"sso": True}},
        },
        "plans": {
            "enterprise": {
                "base_fee": "2000.00",
                "features": {
                    "sso": False,
                    "retention_days": 90,
                    "api_calls": {
                        "included": 10_000_000,
                        "limit": 20_000_000,
                        "enforcement": "hard",
                        "pricing": {"model": "per_unit", "unit_price": "0.0002"},
                    },
                },
                "variable": ["api_calls.limit", "retention_days"],
                "add_ons": ["extra_calls", "sso_pack"],
            }
        },
        "subscriptions": {
            "acme": {
                "plan": "enterprise",
                "anchor": "2026-11-01",
                "variables": {"api_calls.limit": 40_000_000, "retention_days": 365},
                "add_ons": {"extra_calls": 2, "sso_pack": 1},
                "overrides": {"add_on_fees": {"extra_calls": "80.00"}},
            }
        },
    }


def errors_of(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(doc, source="catalog.yaml")
    return caught.value.errors  # type: ignore[attr-defined]


def test_a_contract_gets_its_negotiated_values_add_ons_and_add_on_fees():
    catalog = parse_catalog(document())
    plan = catalog.plans["enterprise"][1]
    assert (sorted(plan.variable), sorted(plan.add_ons)) == (
        ["api_calls.limit", "retention_days"],
        ["extra_calls", "sso_pack"],
    )
    (snapshot,) = catalog.snapshots(version=3, updated_at=NOW)
    features = {f.feature: f for f in snapshot.features}
    # included: plan 10,000,000 + 2 x 5,000,000 = 20,000,000; limit: negotiated 40,000,000 + 2 x
    # 5,000,000 = 50,000,000; sso switched on by the pack; retention the contract's 365
    assert (features["api_calls"].included, features["api_calls"].limit) == (D(20_000_000), D(50_000_000))
    assert features["api_calls"].enforcement is Enforcement.HARD
    assert features["sso"].enabled is True
    assert features["retention_days"].config_value == "365"
    # fees per period: 2000.00 + 2 x 80.00 (the contract's price, list 100.00) + 1 x 50.00 = 2210.00
    assert snapshot.base_fee == D("2210.00")
    assert (snapshot.plan_key, snapshot.plan_version, snapshot.version) == ("enterprise", 1, 3)


def test_the_plan_diff_lists_add_ons_versions_and_each_contracts_terms():
    catalog = parse_catalog(document())
    planned = diff_catalog(catalog, features={}, plans={}, subscriptions={})
    assert [
        line
        for item in planned
        if item.action is not Action.ADD or "feature" not in item.subject
        for line in item.lines()
    ] == [
        "+ add-on extra_calls: 100 USD per unit, 1 feature, at most 5",
        "+ add-on sso_pack: 50 USD per unit, 1 feature",
        "+ plan enterprise v1: base fee 2000 USD, 3 features, allows extra_calls, sso_pack, "
        "negotiated api_calls.limit, retention_days",
        "+ subscription of acme: enterprise v1 with extra_calls x2, sso_pack x1, api_calls.limit=40000000, "
        "retention_days=365 at extra_calls fee 80 from now",
    ]
    published = {("enterprise", 1): catalog.plans["enterprise"][1]}
    target = target_of(catalog.subscriptions["acme"], catalog, published)
    held = Subscribed(
        "acme:enterprise",
        "enterprise",
        1,
        target.overrides,
        {"extra_calls": 1, "sso_pack": 1},
        {"api_calls.limit": D(30_000_000), "retention_days": "365"},
    )
    again = diff_catalog(
        catalog, features={}, plans=published, subscriptions={"acme": held}, add_ons=catalog.add_ons
    )
    assert [(p.action, p.subject) for p in again if "feature" not in p.subject] == [
        (Action.SAME, "add-on extra_calls"),
        (Action.SAME, "add-on sso_pack"),
        (Action.SAME, "plan enterprise v1"),
        (Action.CHANGE, "subscription of acme"),
    ]
    assert again[-1].summary == (
        "enterprise v1: add-on extra_calls 1 -> 2; api_calls.limit 30000000 -> 40000000, "
        "a new version from now (acme:enterprise)"
    )
    at_list = replace(
        held,
        add_ons={"extra_calls": 2, "sso_pack": 1},
        variables={"api_calls.limit": D(40_000_000), "retention_days": "365"},
        overrides=PriceOverrides(),
    )
    repriced = diff_catalog(catalog, features={}, plans=published, subscriptions={"acme": at_list})
    assert repriced[-1].summary == (
        "enterprise v1 at list prices -> extra_calls fee 80, a new version from now (acme:enterprise)"
    )
    same = diff_catalog(
        catalog,
        features={},
        plans=published,
        subscriptions={"acme": replace(at_list, overrides=target.overrides)},
    )
    assert same[-1].action is Action.SAME


def test_a_published_add_on_or_version_with_other_terms_is_refused():
    catalog = parse_catalog(document())
    published_plan = catalog.plans["enterprise"][1]
    fewer = replace(
        published_plan,
        add_ons={"extra_calls": published_plan.add_ons["extra_calls"]},
        variable=frozenset({"retention_days"}),
    )
    cheaper = replace(catalog.add_ons["extra_calls"], fee=D("90.00"))
    planned = diff_catalog(
        catalog,
        features={},
        plans={("enterprise", 1): fewer},
        subscriptions={},
        add_ons={"extra_calls": cheaper},
    )
    refused = {p.subject: p for p in planned if p.action is Action.REFUSED}
    assert refused["add-on extra_calls"].lines() == [
        "! add-on extra_calls: published with other terms; published add-ons are never edited (give it a new key)",
        "    fee: 90 -> 100",
    ]
    assert refused["plan enterprise v1"].details == (
        "add_ons: ['extra_calls'] -> ['extra_calls', 'sso_pack']",
        "variable: ['retention_days'] -> ['api_calls.limit', 'retention_days']",
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d["subscriptions"]["acme"]["variables"].pop("retention_days"),
            "catalog.yaml: subscriptions.acme.variables.retention_days: enterprise v1 marks it negotiated: "
            "give the contract's value (missing: retention_days)",
        ),
        (
            lambda d: d["subscriptions"]["acme"]["variables"].update({"api_calls.included": 1}),
            "catalog.yaml: subscriptions.acme.variables.api_calls.included: not negotiable on enterprise v1 "
            "(negotiable: api_calls.limit, retention_days)",
        ),
        (
            lambda d: d["subscriptions"]["acme"]["add_ons"].update({"extra_calls": 6}),
            "catalog.yaml: subscriptions.acme.add_ons.extra_calls: expected at most 5, got 6",
        ),
        (
            lambda d: d["subscriptions"]["acme"]["add_ons"].update({"extra_calls": -1}),
            "catalog.yaml: subscriptions.acme.add_ons.extra_calls: expected an integer from 0 to 1000000000, got -1",
        ),
        (
            lambda d: d["plans"]["enterprise"]["add_ons"].remove("sso_pack"),
            "catalog.yaml: subscriptions.acme.add_ons.sso_pack: enterprise v1 does not allow this add-on "
            "(allowed: extra_calls)",
        ),
        (
            lambda d: d["plans"]["enterprise"]["add_ons"].append("seat_pack"),
            "catalog.yaml: plans.enterprise.add_ons.2: expected an add-on of this catalog (extra_calls, sso_pack), "
            "got 'seat_pack'",
        ),
        (
            lambda d: d["add_ons"]["sso_pack"].update({"currency": "EUR"}),
            "catalog.yaml: plans.enterprise.add_ons.1: add-on sso_pack is priced in EUR, this version in USD",
        ),
        (
            lambda d: d["plans"]["enterprise"]["variable"].append("sso"),
            "catalog.yaml: plans.enterprise.variable.2: expected a config feature of this version or "
            "<metered feature>.included / .limit, got 'sso'",
        ),
        (
            lambda d: d["add_ons"]["extra_calls"].update({"max_quantity": 0}),
            "catalog.yaml: add_ons.extra_calls.max_quantity: expected an integer from 1 to 1000000000, got 0",
        ),
        (
            lambda d: d["add_ons"]["extra_calls"]["features"].update({"storage": {"included": 1}}),
            "catalog.yaml: add_ons.extra_calls.features.storage: unknown feature (features of this catalog: "
            "api_calls, retention_days, seats, sso)",
        ),
        (
            lambda d: d["subscriptions"]["acme"]["overrides"]["add_on_fees"].update({"extra_calls": "-5"}),
            "catalog.yaml: subscriptions.acme.overrides.add_on_fees.extra_calls: expected a price >= 0 such as "
            "\"0.002\", got '-5'",
        ),
        (
            lambda d: d["subscriptions"]["acme"]["overrides"]["add_on_fees"].update({"seat_pack": "5"}),
            "catalog.yaml: subscriptions.acme.overrides.add_on_fees.seat_pack: enterprise v1 does not allow "
            "this add-on (extra_calls, sso_pack)",
        ),
        (
            lambda d: d["subscriptions"]["acme"]["variables"].update({"retention_days": [1]}),
            "catalog.yaml: subscriptions.acme.variables.retention_days: expected a value such as 50000000, "
            '"2.5" or a config value, got a list',
        ),
    ],
)
def test_errors_name_their_path_in_the_file(change, expected):
    doc = document()
    change(doc)
    assert errors_of(doc)[0] == expected


def test_files_written_before_add_ons_resolve_as_they_did():
    """A file without add-ons or negotiated values: each snapshot is its plan version merged with its
    overrides, as the catalog resolved it before (the rule written out here, independently)."""
    for path in (ROOT / "examples" / "catalog.yaml", ROOT / "libs" / "metergate" / "demo" / "catalog.yaml"):
        catalog = load_catalog(path)
        for snapshot in catalog.snapshots(version=1, updated_at=NOW):
            sub = catalog.subscriptions[snapshot.customer_id]
            if sub.add_ons or sub.variables:
                continue
            assert (snapshot.base_fee, snapshot.currency, snapshot.plan_key, snapshot.plan_version) == (
                sub.base_fee,
                sub.currency,
                sub.plan,
                sub.version,
            ), path
            assert snapshot.features == sub.features, path
            assert (snapshot.billing_anchor, snapshot.reset_period) == (sub.anchor, sub.reset_period)
