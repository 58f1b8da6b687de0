"""`metergate catalog plan FILE` against real PostgreSQL prints, before anything is written, what
applying the file would add, change or refuse: a published plan version whose terms the file
changed is refused with the fields named (published versions are never edited)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from metergate import provisioning
from metergate.cli.catalog import load_catalog
from metergate.cli.main import main
from metergate.db.engine import make_engine
from metergate.domain.subscriptions import PriceOverrides

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "catalog.yaml"


def test_catalog_plan_prints_what_applying_the_file_would_do(database_url, db_schema, tmp_path):
    env = {"METERGATE_DATABASE_URL": database_url, "METERGATE_DATABASE_SCHEMA": db_schema}
    runner = CliRunner()

    def plan(path: Path) -> tuple[int, list[str]]:
        result = runner.invoke(main, ["catalog", "plan", str(path)], env=env)
        return result.exit_code, result.output.splitlines()

    code, lines = plan(EXAMPLE)
    assert code == 0
    assert (
        lines[-1] == "Plan: 16 to add, 0 to change, 0 refused, 0 unchanged."
    )  # 6 features, 1 add-on, 4 versions, globex's contract (it overrides included units: a plan of
    # its own), 4 subscriptions
    assert "+ plan pro v2: base fee 59 USD, 6 features" in lines
    assert "+ subscription of globex: pro@sub_globex_2023 v1 from now" in lines
    assert "+ add-on extra_calls: 20 USD per unit, 1 feature, at most 10" in lines
    assert (
        "+ plan enterprise v1: base fee 500 USD, 3 features, allows extra_calls, "
        "negotiated api_calls.included, api_calls.limit, retention_days"
    ) in lines
    assert (
        "+ subscription of hooli: enterprise v1 with extra_calls x3, api_calls.included=5000000, "
        "api_calls.limit=8000000, retention_days=730 at extra_calls fee 15 from now"
    ) in lines

    now = datetime.now(UTC)
    engine = make_engine(database_url, db_schema)
    try:
        assert provisioning.publish_catalog(engine, load_catalog(EXAMPLE), who="test", now=now) == (6, 4)
        assert provisioning.publish_catalog(engine, load_catalog(EXAMPLE), who="test", now=now) == (0, 0)
        for customer, version in (("acme", 1), ("globex", 1)):
            provisioning.create_customer(engine, customer, name=None, who="test", now=now)
            provisioning.create_subscription(
                engine,
                subscription_id=customer,
                customer_id=customer,
                plan="pro",
                version=version,
                start=None,
                anchor=None,
                reset_period=None,
                add_ons={},
                variables={},
                overrides=PriceOverrides(),
                who="test",
                now=now,
            )
    finally:
        engine.dispose()

    code, lines = plan(EXAMPLE)
    assert code == 0
    assert [line for line in lines if line.startswith(("+", "~"))] == [
        "~ subscription of acme: pro v1 -> pro v2, a new version from now (acme)",
        "+ plan pro@sub_globex_2023 v1: the contract of globex: pro v1 with its overrides",
        "~ subscription of globex: pro v1 -> pro@sub_globex_2023 v1, a new version from now (globex)",
        "+ subscription of hooli: enterprise v1 with extra_calls x3, api_calls.included=5000000, "
        "api_calls.limit=8000000, retention_days=730 at extra_calls fee 15 from now",
        "+ subscription of initech: free v1 from now",
    ]
    assert lines[-1] == "Plan: 3 to add, 2 to change, 0 refused, 11 unchanged."

    edited = yaml.safe_load(EXAMPLE.read_text())
    edited["plans"]["pro"]["versions"][1]["base_fee"] = "45.00"
    edited["plans"]["pro"]["versions"][1]["features"]["api_calls"]["included"] = 12000
    changed = tmp_path / "catalog.yaml"
    changed.write_text(yaml.safe_dump(edited))
    code, lines = plan(changed)
    assert code == 2
    at = lines.index(
        "! plan pro v1: published with other terms; published versions are never edited (give it version 3)"
    )
    assert lines[at + 1 : at + 3] == [
        "    base_fee: 49 -> 45",
        "    features.api_calls.included: 10000 -> 12000",
    ]
    assert lines[-2] == "Plan: 3 to add, 2 to change, 1 refused, 10 unchanged."
    assert lines[-1].startswith(
        f"Error: {changed}: 1 change refused: published plan versions are never edited"
    )
