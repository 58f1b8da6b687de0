"""A catalog file's per-contract overrides (pure): prices only become the subscription's price
overrides on its plan version; anything more makes a contract plan `<plan>@<subscription id>`
holding the contract's whole terms, published once and given a new version when it changes."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from metergate.domain.catalog import parse_catalog
from metergate.domain.catalog_diff import Action, Subscribed, contract_of, diff_catalog, target_of
from metergate.domain.records import Pricing, PricingModel
from metergate.domain.subscriptions import PriceOverrides

pytestmark = pytest.mark.unit


def catalog(overrides: dict) -> dict:  # type: ignore[type-arg]
    return {
        "meters": {"api_calls": {"aggregation": "SUM"}},
        "features": {"api_calls": {"kind": "metered"}, "retention_days": {"kind": "config"}},
        "plans": {
            "pro": {
                "base_fee": "49.00",
                "features": {
                    "retention_days": 30,
                    "api_calls": {"included": 10000, "pricing": {"model": "per_unit", "unit_price": "0.002"}},
                },
            }
        },
        "subscriptions": {
            "globex": {"plan": "pro", "id": "g1", "anchor": "2026-11-01", "overrides": overrides}
        },
    }


def test_price_overrides_stay_on_the_plan_version():
    file = parse_catalog(
        catalog(
            {
                "base_fee": "39.00",
                "features": {"api_calls": {"pricing": {"model": "per_unit", "unit_price": "0.0015"}}},
            }
        )
    )
    sub, plan = file.subscriptions["globex"], file.plans["pro"][1]
    overrides, others = contract_of(sub, plan)
    assert others == []
    assert (
        overrides.as_dict()
        == PriceOverrides(
            base_fee=D("39.00"),
            pricing={"api_calls": Pricing(model=PricingModel.PER_UNIT, unit_price=D("0.0015"))},
        ).as_dict()
    )
    target = target_of(sub, file, {})
    assert (target.plan, target.version, target.contract) == ("pro", 1, None)
    planned = diff_catalog(file, features={}, plans={}, subscriptions={})
    assert planned[-1].lines() == [
        "+ subscription of globex: pro v1 at base fee 39, api_calls per_unit 0.0015 from now"
    ]
    same = diff_catalog(
        file, features={}, plans={}, subscriptions={"globex": Subscribed("g1", "pro", 1, overrides)}
    )
    assert same[-1].action is Action.SAME
    at_list = diff_catalog(file, features={}, plans={}, subscriptions={"globex": Subscribed("g1", "pro", 1)})
    assert at_list[-1].lines() == [
        "~ subscription of globex: pro v1 at list prices -> base fee 39, api_calls per_unit 0.0015, "
        "a new version from now (g1)"
    ]


def test_a_contract_that_changes_more_than_prices_is_a_plan_of_its_own():
    file = parse_catalog(catalog({"features": {"api_calls": {"included": 25000}, "retention_days": 90}}))
    sub = file.subscriptions["globex"]
    target = target_of(sub, file, {})
    assert (target.plan, target.version, target.overrides.as_dict()) == (
        "pro@g1",
        1,
        PriceOverrides().as_dict(),
    )
    assert target.changes == (
        "overrides.features.api_calls.included: 10000 -> 25000",
        "overrides.features.retention_days.config_value: 30 -> 90",
    )
    assert target.contract is not None
    assert (target.contract.terms.base_fee, target.contract.terms.features["api_calls"].included) == (
        D("49.00"),
        D(25000),
    )
    # published: the same terms are found again; other terms are the next version, never an edit
    published = {("pro@g1", 1): target.contract}
    assert (target_of(sub, file, published).version, target_of(sub, file, published).contract) == (1, None)
    renegotiated = parse_catalog(catalog({"features": {"api_calls": {"included": 30000}}}))
    moved = target_of(renegotiated.subscriptions["globex"], renegotiated, published)
    assert (moved.plan, moved.version) == ("pro@g1", 2)
    planned = diff_catalog(
        renegotiated, features={}, plans=published, subscriptions={"globex": Subscribed("g1", "pro@g1", 1)}
    )
    assert [line for item in planned[-2:] for line in item.lines()] == [
        "+ plan pro@g1 v2: the contract of globex: pro v1 with its overrides",
        "    overrides.features.api_calls.included: 10000 -> 30000",
        "~ subscription of globex: pro@g1 v1 -> pro@g1 v2, a new version from now (g1)",
    ]
