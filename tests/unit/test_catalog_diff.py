"""The catalog plan (pure): what a file would add, change or refuse against what is published."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D

import pytest

from metergate.domain.catalog import FeatureDefinition, parse_catalog
from metergate.domain.catalog_diff import Action, Subscribed, diff_catalog, plan_version_changes, summary
from metergate.domain.records import FeatureKind

pytestmark = pytest.mark.unit

FILE = {
    "meters": {"api_calls": {"aggregation": "SUM"}},
    "features": {"api_calls": {"kind": "metered"}, "sso": {"kind": "boolean"}},
    "plans": {
        "pro": {
            "versions": {
                1: {"base_fee": "49.00", "features": {"sso": True, "api_calls": {"included": 10000}}},
                2: {"base_fee": "59.00", "features": {"sso": True, "api_calls": {"included": 20000}}},
            }
        }
    },
    "subscriptions": {"acme": {"plan": "pro", "anchor": "2026-11-01"}},
}


def test_a_file_is_planned_against_what_is_published():
    catalog = parse_catalog(FILE)
    published_v1 = catalog.plans["pro"][1]
    v2 = catalog.plans["pro"][2]
    changed_v2 = replace(v2, terms=replace(v2.terms, base_fee=D("55")))
    planned = diff_catalog(
        catalog,
        features={"sso": FeatureDefinition("sso", FeatureKind.CONFIG)},
        plans={("pro", 1): published_v1, ("pro", 2): changed_v2},
        subscriptions={"acme": Subscribed("acme", "pro", 1)},
    )
    assert [(p.action, p.subject) for p in planned] == [
        (Action.ADD, "feature api_calls"),
        (Action.REFUSED, "feature sso"),
        (Action.SAME, "plan pro v1"),
        (Action.REFUSED, "plan pro v2"),
        (Action.CHANGE, "subscription of acme"),
    ]
    assert planned[1].summary == "a feature's kind and meter never change (config -> boolean)"
    assert planned[3].details == ("base_fee: 55 -> 59",)
    assert summary(planned) == "Plan: 1 to add, 1 to change, 2 refused, 1 unchanged."
    assert plan_version_changes(published_v1, catalog.plans["pro"][2]) == [
        "base_fee: 49 -> 59",
        "features.api_calls.included: 10000 -> 20000",
    ]
