"""The catalog file: what it resolves to, and errors that name their path inside the file."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from metergate.cli.catalog import load_catalog
from metergate.domain.catalog import parse_catalog
from metergate.domain.records import Enforcement, EntitlementSnapshot, PricingModel, ResetPeriod
from metergate.errors import CatalogError
from metergate.wire.codec import codec

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "catalog.yaml"
NOW = datetime(2024, 5, 1, tzinfo=UTC)


def base() -> dict:
    return {
        "meters": {"api_calls": {"aggregation": "SUM"}},
        "features": {"api_calls": {"kind": "metered", "meter": "api_calls"}, "sso": {"kind": "boolean"}},
        "plans": {
            "pro": {
                "base_fee": "49.00",
                "features": {
                    "sso": True,
                    "api_calls": {
                        "included": 100,
                        "limit": 1000,
                        "enforcement": "hard",
                        "thresholds": [80, 90],
                        "pricing": {"model": "per_unit", "unit_price": "0.002"},
                    },
                },
            }
        },
        "subscriptions": {"acme": {"plan": "pro", "anchor": "2024-01-31T00:00:00Z"}},
    }


def errors_of(document: dict) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(document, source="catalog.yaml")
    return caught.value.errors  # type: ignore[attr-defined]


def test_the_example_catalog_resolves_and_every_snapshot_round_trips():
    catalog = load_catalog(EXAMPLE)
    snapshots = {s.customer_id: s for s in catalog.snapshots(version=7, updated_at=NOW)}
    assert set(snapshots) == {"acme", "globex", "initech", "hooli"}
    for snapshot in snapshots.values():
        assert codec(EntitlementSnapshot).decode(codec(EntitlementSnapshot).encode(snapshot)) == snapshot
        assert snapshot.version == 7
    globex = snapshots["globex"]
    assert (globex.plan_key, globex.plan_version, globex.base_fee) == ("pro", 1, Decimal("39.00"))
    calls = next(f for f in globex.features if f.feature == "api_calls")
    assert calls.included == 25000  # per-customer override
    assert calls.limit == 50000  # kept from plan version 1
    assert calls.pricing.unit_price == Decimal("0.0015")
    assert snapshots["acme"].plan_version == 2
    assert snapshots["initech"].reset_period is ResetPeriod.DAILY
    assert globex.billing_anchor == datetime(2023, 6, 15, tzinfo=UTC)


def test_plan_values_reach_the_snapshot_exactly():
    (snapshot,) = parse_catalog(base()).snapshots(version=1, updated_at=NOW)
    calls = next(f for f in snapshot.features if f.feature == "api_calls")
    assert (calls.included, calls.limit, calls.enforcement, calls.thresholds) == (
        100,
        1000,
        Enforcement.HARD,
        (80, 90),
    )
    assert calls.pricing.model is PricingModel.PER_UNIT and calls.pricing.unit_price == Decimal("0.002")
    assert snapshot.base_fee == Decimal("49.00") and snapshot.currency == "USD"


def test_a_negative_included_value_names_its_path():
    document = base()
    document["plans"]["pro"]["features"]["api_calls"]["included"] = -5
    assert errors_of(document) == [
        "catalog.yaml: plans.pro.features.api_calls.included: expected an integer >= 0, got -5"
    ]


def test_every_error_of_the_file_is_reported_at_once():
    document = base()
    document["meters"]["active"] = {"aggregation": "UNIQUE_COUNT"}
    document["plans"]["pro"]["features"]["api_calls"]["pricing"] = {"model": "package", "unit_price": "1"}
    document["plans"]["pro"]["features"]["nope"] = True
    document["subscriptions"]["acme"]["reset_period"] = "weekly"
    document["subscriptions"]["bob"] = {"plan": "enterprise", "anchor": "2024-01-01"}
    found = "\n".join(errors_of(document))
    assert "meters.active.unique_property: UNIQUE_COUNT needs" in found
    assert "plans.pro.features.api_calls.pricing.package_size: expected an integer >= 0" in found
    assert "plans.pro.features.nope: unknown feature" in found
    assert "subscriptions.acme.reset_period: expected one of daily, monthly, yearly, got 'weekly'" in found
    assert "subscriptions.bob.plan: expected a plan of this catalog (pro), got 'enterprise'" in found


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d["features"]["api_calls"].update(meter="tokens"),
            "features.api_calls.meter: expected a meter",
        ),
        (
            lambda d: d["plans"]["pro"]["features"].update(sso="yes"),
            "plans.pro.features.sso: expected true or false",
        ),
        (
            lambda d: d["plans"]["pro"]["features"]["api_calls"].update(limit=None),
            "plans.pro.features.api_calls.enforcement: hard enforcement needs a limit",
        ),
        (
            lambda d: d["plans"]["pro"]["features"]["api_calls"].update(thresholds=[0]),
            "plans.pro.features.api_calls.thresholds.0: expected an integer from 1 to 1000, got 0",
        ),
        (
            lambda d: d["plans"]["pro"]["features"]["api_calls"].update(thresholds=[90, 80, 80]),
            "plans.pro.features.api_calls.thresholds: expected increasing percentages, each once, such as [80, 90], got [90, 80, 80]",
        ),
        (
            lambda d: d["plans"]["pro"]["features"]["api_calls"].update(included=2000),
            "plans.pro.features.api_calls.included: expected at most the limit (1000), got 2000",
        ),
        (
            lambda d: d["plans"]["pro"]["features"]["api_calls"]["pricing"].update(unit_price="abc"),
            "plans.pro.features.api_calls.pricing.unit_price: expected a price >= 0",
        ),
        (
            lambda d: d["plans"]["pro"]["features"]["api_calls"].update(
                pricing={
                    "model": "graduated",
                    "tiers": [{"up_to": 10, "unit_price": 1}, {"up_to": 5, "unit_price": 1}],
                }
            ),
            "plans.pro.features.api_calls.pricing.tiers.1.up_to: expected more than the previous tier's 10, got 5",
        ),
        (
            lambda d: d["subscriptions"]["acme"].update(anchor="soon"),
            "subscriptions.acme.anchor: expected a date",
        ),
        (
            lambda d: d["subscriptions"]["acme"].update(version=3),
            "subscriptions.acme.version: expected a version of plan pro (1)",
        ),
        (lambda d: d["plans"]["pro"].update(colour="red"), "plans.pro.colour: unknown field"),
        (
            lambda d: d["subscriptions"]["acme"].update(
                overrides={"features": {"api_calls": {"included": "x"}}}
            ),
            "subscriptions.acme.overrides.features.api_calls.included: expected an integer >= 0 or a decimal string",
        ),
    ],
)
def test_errors_name_what_and_where(change, expected):
    document = base()
    change(document)
    assert any(expected in line for line in errors_of(document)), errors_of(document)


def test_versions_are_kept_and_subscriptions_pin_one():
    document = base()
    pro = document["plans"]["pro"]
    document["plans"]["pro"] = {"versions": {1: pro, 2: {**pro, "base_fee": "59"}}}
    document["subscriptions"]["old"] = {"plan": "pro", "version": 1, "anchor": "2023-01-01"}
    snapshots = {s.customer_id: s for s in parse_catalog(document).snapshots(version=1, updated_at=NOW)}
    assert snapshots["acme"].plan_version == 2 and snapshots["acme"].base_fee == 59
    assert snapshots["old"].plan_version == 1 and snapshots["old"].base_fee == Decimal("49.00")


def test_yaml_floats_are_read_through_their_literal():
    document = yaml.safe_load(
        "meters: {m: {aggregation: SUM}}\nfeatures: {m: {kind: metered}}\n"
        "plans: {p: {features: {m: {included: 2.5, pricing: {model: per_unit, unit_price: 0.1}}}}}\n"
        "subscriptions: {c: {plan: p, anchor: 2024-02-29}}\n"
    )
    (snapshot,) = parse_catalog(document).snapshots(version=1, updated_at=NOW)
    (feature,) = snapshot.features
    assert feature.included == Decimal("2.5") and feature.pricing.unit_price == Decimal("0.1")
    assert snapshot.billing_anchor == datetime(2024, 2, 29, tzinfo=UTC)


def test_the_cli_validates_a_file_and_names_the_path_of_an_error(tmp_path):
    from click.testing import CliRunner

    from metergate.cli.catalog import catalog

    runner = CliRunner()
    ok = runner.invoke(catalog, ["validate", str(EXAMPLE)])
    assert ok.exit_code == 0, ok.output
    assert "4 meters, 6 features, 1 add-on, 3 plans (4 versions), 4 subscriptions" in ok.output
    broken = tmp_path / "catalog.yaml"
    document = base()
    document["plans"]["pro"]["features"]["api_calls"]["included"] = -5
    broken.write_text(yaml.safe_dump(document))
    failed = runner.invoke(catalog, ["validate", str(broken)])
    assert failed.exit_code == 2
    assert (
        f"{broken}: plans.pro.features.api_calls.included: expected an integer >= 0, got -5" in failed.output
    )
