"""`metergate catalog apply FILE` against real PostgreSQL and the real broker is the diff that
`catalog plan FILE` prints, done: it publishes new plan versions (never editing a published one),
subscribes and moves customers with dated versions, keeps a contract that changes more than prices
as a plan of its own, relays the terms to entitlements.snapshots, and applies nothing when the diff
refuses something. The snapshots it relays carry the same terms as the file's own resolution."""

from __future__ import annotations

from decimal import Decimal as D
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from metergate import provisioning
from metergate.cli.catalog import load_catalog
from metergate.cli.main import main
from metergate.db.engine import make_engine
from metergate.domain.records import EntitlementSnapshot, utc_millis
from metergate.testing.topics import read_topic
from metergate.wire.codec import codec

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "catalog.yaml"
DEMO = ROOT / "libs" / "metergate" / "demo" / "catalog.yaml"


def test_catalog_apply_is_a_diff_against_postgresql(
    database_url, db_schema, kafka_bootstrap, kafka_config, topics, tmp_path
):
    env = {
        "METERGATE_DATABASE_URL": database_url,
        "METERGATE_DATABASE_SCHEMA": db_schema,
        "METERGATE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "METERGATE_KAFKA_TOPIC_PREFIX": topics.prefix,
    }
    runner = CliRunner()

    def run(*args: str) -> tuple[int, list[str]]:
        result = runner.invoke(main, list(args), env=env)
        return result.exit_code, result.output.splitlines()

    code, planned = run("catalog", "plan", str(EXAMPLE))
    assert code == 0, planned
    code, applied = run("catalog", "apply", str(EXAMPLE))
    assert code == 0, applied
    assert applied[:-1] == planned[:-1]  # apply does what plan printed, in its order
    assert planned[-1] == "Plan: 16 to add, 0 to change, 0 refused, 0 unchanged."
    assert (
        applied[-1] == "Apply complete: 16 added, 0 changed, 0 unchanged; published 4 meters and 4 snapshots."
    )
    contract = applied.index(
        "+ plan pro@sub_globex_2023 v1: the contract of globex: pro v1 with its overrides"
    )
    assert applied[contract + 1] == "    overrides.features.api_calls.included: 10000 -> 25000"
    assert "+ subscription of globex: pro@sub_globex_2023 v1 from now" in applied
    assert "+ subscription of acme: pro v2 from now" in applied

    # what reached the topic is what the file resolves to (the Kafka path's own resolution)
    records = read_topic(kafka_config, topics.snapshots, expect=4, idle_s=1.0)
    relayed = {s.customer_id: s for s in (codec(EntitlementSnapshot).decode(v) for _, v, _, _ in records)}
    catalog = load_catalog(EXAMPLE)
    for expected in catalog.snapshots(version=1, updated_at=utc_millis(relayed["acme"].updated_at)):
        got = relayed[expected.customer_id]
        assert (got.subscription_id, got.base_fee, got.currency, got.billing_anchor, got.reset_period) == (
            expected.subscription_id,
            expected.base_fee,
            expected.currency,
            expected.billing_anchor,
            expected.reset_period,
        )
        assert {f.feature: f for f in got.features} == {f.feature: f for f in expected.features}
    globex = relayed["globex"]
    assert (globex.plan_key, globex.base_fee) == ("pro@sub_globex_2023", D("39.00"))
    calls = {f.feature: f for f in globex.features}["api_calls"]
    assert (calls.included, calls.pricing.unit_price) == (D(25000), D("0.0015"))

    # again: nothing to do
    code, again = run("catalog", "apply", str(EXAMPLE))
    assert code == 0, again
    assert (
        again[-1] == "Apply complete: 0 added, 0 changed, 16 unchanged; published 4 meters and 0 snapshots."
    )

    # a new version for acme and a renegotiated contract: new versions, the published ones kept
    edited = yaml.safe_load(EXAMPLE.read_text())
    edited["plans"]["pro"]["versions"][3] = {**edited["plans"]["pro"]["versions"][2], "base_fee": "69.00"}
    edited["subscriptions"]["acme"]["version"] = 3
    edited["subscriptions"]["globex"]["overrides"]["features"]["api_calls"]["included"] = 30000
    edited["subscriptions"]["initech"]["overrides"] = {"base_fee": "5.00"}
    changed = tmp_path / "catalog.yaml"
    changed.write_text(yaml.safe_dump(edited))
    code, applied = run("catalog", "apply", str(changed))
    assert code == 0, applied
    assert [line for line in applied if line.startswith(("+", "~"))] == [
        "+ plan pro v3: base fee 69 USD, 6 features",
        "~ subscription of acme: pro v2 -> pro v3, a new version from now (acme:pro)",
        "+ plan pro@sub_globex_2023 v2: the contract of globex: pro v1 with its overrides",
        "~ subscription of globex: pro@sub_globex_2023 v1 -> pro@sub_globex_2023 v2, a new version from now (sub_globex_2023)",
        "~ subscription of initech: free v1 at list prices -> base fee 5, a new version from now (initech:free)",
    ]
    assert (
        applied[-1] == "Apply complete: 2 added, 3 changed, 12 unchanged; published 4 meters and 3 snapshots."
    )
    engine = make_engine(database_url, db_schema)
    try:
        acme = provisioning.show_subscription(engine, "acme:pro")
        assert [(v.plan.label, v.effective_to is None) for v in acme.versions] == [
            ("pro v2", False),
            ("pro v3", True),
        ]
        kept = provisioning.show_plan_version(engine, "pro@sub_globex_2023", 1)
        assert kept.terms.features["api_calls"].included == D(25000)  # never edited
        initech = provisioning.show_subscription(engine, "initech:free")
        assert initech.latest.overrides.base_fee == D("5.00")
        plans_before = [(p.plan, p.versions) for p in provisioning.list_plans(engine)]
    finally:
        engine.dispose()

    # a published version edited in the file: refused, nothing written
    edited["plans"]["pro"]["versions"][1]["base_fee"] = "45.00"
    edited["subscriptions"]["acme"]["version"] = 1
    changed.write_text(yaml.safe_dump(edited))
    code, refused = run("catalog", "apply", str(changed))
    assert code == 2
    assert (
        "! plan pro v1: published with other terms; published versions are never edited (give it version 4)"
        in refused
    )
    assert refused[-1].startswith(f"Error: {changed}: 1 change refused, nothing written")
    engine = make_engine(database_url, db_schema)
    try:
        assert [(p.plan, p.versions) for p in provisioning.list_plans(engine)] == plans_before
        assert len(provisioning.show_subscription(engine, "acme:pro").versions) == 2
    finally:
        engine.dispose()


def test_the_demo_catalog_applies_as_it_is(database_url, db_schema, kafka_bootstrap, topics):
    env = {
        "METERGATE_DATABASE_URL": database_url,
        "METERGATE_DATABASE_SCHEMA": db_schema,
        "METERGATE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "METERGATE_KAFKA_TOPIC_PREFIX": topics.prefix,
    }
    result = CliRunner().invoke(main, ["catalog", "apply", str(DEMO)], env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    catalog = load_catalog(DEMO)
    assert not [line for line in lines if line.startswith(("!", "~", "="))]
    assert lines[-1].endswith(
        f"; published {len(catalog.meters)} meters and {len(catalog.subscriptions)} snapshots."
    )


def test_catalog_apply_to_kafka_still_publishes_the_file_straight_to_the_topics(
    kafka_bootstrap, kafka_config, topics
):
    env = {"METERGATE_KAFKA_BOOTSTRAP": kafka_bootstrap, "METERGATE_KAFKA_TOPIC_PREFIX": topics.prefix}
    result = CliRunner().invoke(main, ["catalog", "apply", "--to", "kafka", str(EXAMPLE)], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith("published 4 meters and 4 snapshots (version ")
    records = read_topic(kafka_config, topics.snapshots, expect=4, idle_s=1.0)
    relayed = {s.customer_id: s for s in (codec(EntitlementSnapshot).decode(v) for _, v, _, _ in records)}
    assert (relayed["globex"].plan_key, relayed["globex"].base_fee) == ("pro", D("39.00"))
