"""`metergate catalog apply FILE` against real PostgreSQL and the real broker provisions a custom
contract from the file (its negotiated values, add-ons and add-on fee), relays its resolved terms to
entitlements.snapshots, applies a renegotiation as a new dated version, and applies each
subscription in a transaction of its own: one that cannot be applied is named on one line with its
field and rolled back alone (its new customer too), the others are applied; a long file prints its
progress."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from metergate import provisioning
from metergate.cli.main import main
from metergate.db.engine import make_engine
from metergate.domain.records import EntitlementSnapshot
from metergate.domain.subscriptions import When
from metergate.errors import SubscriptionError
from metergate.testing.topics import read_topic
from metergate.wire.codec import codec

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "catalog.yaml"


def latest_snapshots(kafka_config, topic: str, expect: int) -> dict[str, EntitlementSnapshot]:
    records = read_topic(kafka_config, topic, expect=expect, idle_s=1.0)
    assert len(records) == expect
    found: dict[str, EntitlementSnapshot] = {}
    for _, value, _, _ in records:
        snapshot = codec(EntitlementSnapshot).decode(value)
        if snapshot.customer_id not in found or snapshot.version > found[snapshot.customer_id].version:
            found[snapshot.customer_id] = snapshot
    return found


def test_catalog_apply_provisions_add_ons_and_applies_each_subscription_on_its_own(
    database_url, db_schema, kafka_bootstrap, kafka_config, topics, tmp_path
):
    env = {
        "METERGATE_DATABASE_URL": database_url,
        "METERGATE_DATABASE_SCHEMA": db_schema,
        "METERGATE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "METERGATE_KAFKA_TOPIC_PREFIX": topics.prefix,
    }
    runner = CliRunner()

    def apply(path: Path) -> tuple[int, list[str], list[str]]:
        result = runner.invoke(main, ["catalog", "apply", str(path)], env=env)
        return result.exit_code, result.stdout.splitlines(), result.stderr.splitlines()

    code, out, err = apply(EXAMPLE)
    assert (code, err) == (0, []), out
    assert "+ add-on extra_calls: 20 USD per unit, 1 feature, at most 10" in out
    # hooli's contract: enterprise v1, api_calls included 5,000,000 and limit 8,000,000 negotiated,
    # + 3 x 10,000 each from extra_calls; fees 500.00 + 3 x 15.00 (its add-on price) = 545.00
    hooli = latest_snapshots(kafka_config, topics.snapshots, 4)["hooli"]
    calls = {f.feature: f for f in hooli.features}
    assert (calls["api_calls"].included, calls["api_calls"].limit) == (D(5_030_000), D(8_030_000))
    assert calls["retention_days"].config_value == "730"
    assert (hooli.plan_key, hooli.plan_version, hooli.base_fee) == ("enterprise", 1, D("545.00"))

    # initech has a change scheduled at its period end (made elsewhere, e.g. over the API)
    engine = make_engine(database_url, db_schema)
    try:
        scheduled = provisioning.change_subscription(
            engine,
            "initech:free",
            provisioning.Change(overrides=provisioning.OverrideUpdate(base_fee=D("1.00"))),
            at=When.PERIOD_END,
            who="crm",
            now=datetime.now(UTC),
        ).history.latest.effective_from
    finally:
        engine.dispose()

    # renegotiated: 5 add-on units and a higher limit; bob names a subscription id globex holds;
    # initech's new price cannot apply now, before the change scheduled later
    edited = yaml.safe_load(EXAMPLE.read_text())
    edited["subscriptions"]["initech"]["overrides"] = {"base_fee": "2.00"}
    edited["subscriptions"]["hooli"]["add_ons"] = {"extra_calls": 5}
    edited["subscriptions"]["hooli"]["variables"]["api_calls.limit"] = 9_000_000
    edited["subscriptions"]["bob"] = {"plan": "free", "id": "sub_globex_2023", "anchor": "2024-03-01"}
    edited["subscriptions"]["carol"] = {"plan": "free", "anchor": "2024-03-01"}
    changed = tmp_path / "catalog.yaml"
    changed.write_text(yaml.safe_dump(edited))
    code, out, err = apply(changed)
    assert code == 2
    assert err == [
        "x subscription of bob (sub_globex_2023): subscription_id: 'sub_globex_2023' exists already (change it with "
        "`subscriptions change`)",
        f"x subscription of initech (initech:free): at: a change is scheduled at {scheduled.isoformat()} "
        "(set_overrides); unschedule it (`subscriptions unschedule`) before changing the terms earlier",
        f"Error: {changed}: 2 subscriptions could not be applied (each named above with its field); "
        "everything else is applied",
    ]
    assert [line for line in out if line.startswith(("+", "~"))] == [
        "+ subscription of carol: free v1 from now",
        "~ subscription of hooli: enterprise v1: add-on extra_calls 3 -> 5; api_calls.limit 8000000 -> "
        "9000000, a new version from now (hooli:enterprise)",
    ]
    assert out[-1] == (
        "Apply complete: 1 added, 1 changed, 14 unchanged, 2 failed; published 4 meters and 3 snapshots."
    )
    # limit 9,000,000 + 5 x 10,000; included 5,000,000 + 5 x 10,000; fees 500.00 + 5 x 15.00 = 575.00
    relayed = latest_snapshots(
        kafka_config, topics.snapshots, 7
    )  # + initech v1 ending where its change starts
    calls = {f.feature: f for f in relayed["hooli"].features}
    assert (calls["api_calls"].included, calls["api_calls"].limit) == (D(5_050_000), D(9_050_000))
    assert relayed["hooli"].base_fee == D("575.00")
    assert relayed["carol"].plan_key == "free"
    assert "bob" not in relayed
    engine = make_engine(database_url, db_schema)
    try:
        history = provisioning.show_subscription(engine, "hooli:enterprise")
        assert [(v.add_ons, v.variables["api_calls.limit"], v.change) for v in history.versions] == [
            ({"extra_calls": 3}, D(8_000_000), "create"),
            ({"extra_calls": 5}, D(9_000_000), "set_variables+resize_add_on"),
        ]
        assert history.latest.overrides.add_on_fees == {"extra_calls": D("15.00")}
        with pytest.raises(SubscriptionError, match="customer_id: no customer 'bob'"):
            provisioning.show_customer(engine, "bob")  # rolled back with its subscription
        assert provisioning.show_subscription(engine, "sub_globex_2023").versions[0].customer_id == "globex"
        initech = provisioning.show_subscription(engine, "initech:free")  # as it was: rolled back
        assert [(v.overrides.base_fee, v.effective_from) for v in initech.versions][1:] == [
            (D("1.00"), scheduled)
        ]
    finally:
        engine.dispose()


def test_a_long_file_prints_its_progress(database_url, db_schema, kafka_bootstrap, topics, tmp_path):
    env = {
        "METERGATE_DATABASE_URL": database_url,
        "METERGATE_DATABASE_SCHEMA": db_schema,
        "METERGATE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "METERGATE_KAFKA_TOPIC_PREFIX": topics.prefix,
    }
    file = {
        "features": {"sso": {"kind": "boolean"}},
        "plans": {"free": {"features": {"sso": False}}},
        "subscriptions": {f"c{n:02d}": {"plan": "free", "anchor": "2024-03-01"} for n in range(60)},
    }
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(file))
    result = CliRunner().invoke(main, ["catalog", "apply", str(path)], env=env)
    assert result.exit_code == 0, result.output
    # one line every tenth of the 60 subscriptions
    assert result.stderr.splitlines() == [
        f"catalog apply: {n}/60 subscriptions (0 failed)" for n in range(6, 61, 6)
    ]
    assert result.stdout.splitlines()[-1] == (
        "Apply complete: 62 added, 0 changed, 0 unchanged; published 0 meters and 60 snapshots."
    )
