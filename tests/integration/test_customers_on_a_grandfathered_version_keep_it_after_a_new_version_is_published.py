"""Customers on a grandfathered version keep it after a new version is published (real PostgreSQL,
the real broker, the running admin service and its relay, an in-process entitlement check): acme
and globex are subscribed to growth v1 from a catalog file; growth v2 (a higher limit) is published
over the admin API; a new customer gets v2 at once, while acme and globex keep v1 in PostgreSQL, on
entitlements.snapshots (no snapshot is published for them) and in the check (v1's limit still
denies); the file applied again changes nothing; `subscriptions migrate --at period_end` schedules
v2 for them at the end of their billing period, and until then the check still answers v1."""

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
from metergate.domain.periods import period_for
from metergate.domain.records import EntitlementSnapshot, ResetPeriod
from metergate.entitlements import Entitlements, EntitlementsSettings
from metergate.settings import KafkaSettings
from metergate.testing.topics import read_topic
from metergate.testing.waiting import wait_until
from metergate.wire.codec import codec
from tests.integration.admin_support import AdminApi
from tests.integration.rating_support import query

pytestmark = pytest.mark.integration

V1 = {"included": 10_000_000, "limit": 20_000_000, "enforcement": "hard"}
V2 = {"included": 12_000_000, "limit": 30_000_000, "enforcement": "hard"}
ANCHOR = datetime(2024, 1, 1, tzinfo=UTC)


def catalog_file(path: Path, *, with_v2: bool) -> Path:
    versions = {1: {"base_fee": "1000.00", "features": {"api_calls": V1}}}
    if with_v2:
        versions[2] = {"base_fee": "1100.00", "features": {"api_calls": V2}}
    path.write_text(
        yaml.safe_dump(
            {
                "meters": {"api_calls": {"aggregation": "SUM"}},
                "features": {"api_calls": {"kind": "metered", "meter": "api_calls"}},
                "plans": {"growth": {"versions": versions}},
                "subscriptions": {
                    customer: {"plan": "growth", "version": 1, "id": customer, "anchor": ANCHOR.isoformat()}
                    for customer in ("acme", "globex")
                },
            }
        )
    )
    return path


def test_customers_on_a_grandfathered_version_keep_it_after_a_new_version_is_published(
    database_url, db_schema, kafka_bootstrap, kafka_config, topics, tmp_path
):
    env = {
        "METERGATE_DATABASE_URL": database_url,
        "METERGATE_DATABASE_SCHEMA": db_schema,
        "METERGATE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "METERGATE_KAFKA_TOPIC_PREFIX": topics.prefix,
    }
    runner = CliRunner()

    def cli(*args: str) -> tuple[int, list[str]]:
        result = runner.invoke(main, list(args), env=env)
        return result.exit_code, result.output.splitlines()

    def published() -> dict[str, list[tuple[int | None, datetime | None]]]:
        """customer -> (plan version, valid to) of each snapshot on the topic, in order."""
        found: dict[str, list[tuple[int | None, datetime | None]]] = {}
        for _, value, _, _ in read_topic(kafka_config, topics.snapshots, idle_s=1.0):
            snapshot = codec(EntitlementSnapshot).decode(value)
            found.setdefault(snapshot.customer_id, []).append((snapshot.plan_version, snapshot.valid_to))
        return found

    code, out = cli("catalog", "apply", str(catalog_file(tmp_path / "v1.yaml", with_v2=False)))
    assert code == 0, out
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=topics.prefix)
    entitlements = Entitlements(EntitlementsSettings(kafka=kafka, checkpoint_path=None))
    try:
        assert entitlements.wait_caught_up(60)
        for customer in ("acme", "globex"):
            wait_until(
                lambda c=customer: entitlements.check(c, "api_calls", 1).limit == D(20_000_000),
                customer,
                timeout_s=30,
            )
        with (
            AdminApi(
                database_url, db_schema, tmp_path / "admin", kafka_bootstrap=kafka_bootstrap, topics=topics
            ) as api,
            api.client(api.key("pricing", "admin")) as http,
        ):
            v2 = http.post(
                "/v1/plans/growth/versions", json={"base_fee": "1100.00", "features": {"api_calls": V2}}
            )
            assert (v2.status_code, v2.json()["version"]) == (201, 2), v2.text
            # a new customer gets the latest version: its snapshot reaching the check shows the
            # relay has run past v2's publication
            assert http.post("/v1/customers", json={"customer_id": "initech"}).status_code == 201
            created = http.post("/v1/subscriptions", json={"customer_id": "initech", "plan": "growth"})
            assert created.json()["versions"][0]["plan_version"] == 2, created.text
            wait_until(
                lambda: entitlements.check("initech", "api_calls", 1).limit == D(30_000_000),
                "v2",
                timeout_s=30,
            )

            # grandfathered: v1's limit of 20,000,000 still decides for acme and globex
            for customer in ("acme", "globex"):
                denied = entitlements.check(customer, "api_calls", 20_000_001)
                assert (denied.has_access, denied.reason.value, denied.limit) == (
                    False,
                    "would_exceed",
                    D(20_000_000),
                )
                assert entitlements.check(customer, "api_calls", 20_000_000).has_access
            assert published() == {"acme": [(1, None)], "globex": [(1, None)], "initech": [(2, None)]}
            engine = make_engine(database_url, db_schema)
            try:
                for customer in ("acme", "globex"):
                    history = provisioning.show_subscription(engine, customer)
                    assert [(v.plan.label, v.effective_to) for v in history.versions] == [("growth v1", None)]
            finally:
                engine.dispose()

            # the file, now with v2 as published, changes nothing: its customers pin v1
            code, out = cli("catalog", "apply", str(catalog_file(tmp_path / "v2.yaml", with_v2=True)))
            assert code == 0, out
            assert [line for line in out if not line.startswith("=")] == [
                "Apply complete: 0 added, 0 changed, 5 unchanged; published 1 meters and 0 snapshots."
            ]
            assert "= subscription of acme: growth v1 (acme)" in out

            # migrated at the end of their period: scheduled, v1 in force until then
            before = datetime.now(UTC)
            code, out = cli("subscriptions", "migrate", "--plan", "growth", "--from", "1", "--to", "2")
            after = datetime.now(UTC)
            assert code == 0, out
            ends = {period_for(t, ANCHOR, ResetPeriod.MONTHLY).end for t in (before, after)}
            assert len(out) == 3 and out[-1] == "2 subscriptions migrated from growth v1", out
            moments = {
                line.removeprefix(f"{c}: growth v2 from ")
                for c, line in zip(("acme", "globex"), out[:2], strict=True)
            }
            assert len(moments) == 1 and {datetime.fromisoformat(m) for m in moments} <= ends, out
            end = datetime.fromisoformat(moments.pop())
            # v2's snapshots wait in the outbox for that moment (v1's, now ending then, is due at
            # once); the check still answers v1
            pending = query(
                database_url,
                db_schema,
                "SELECT message_key, available_at, payload->>'plan_version' FROM catalog_outbox "
                "WHERE published_at IS NULL AND superseded_by IS NULL ORDER BY 1, 2",
            )
            # each keyed by its customer and the moment its terms start (records.snapshot_key)
            assert [(key, version) for key, at, version in pending if at > after] == [
                (f"acme|{end.isoformat()}", "2"),
                (f"globex|{end.isoformat()}", "2"),
            ]
            assert {at for _, at, version in pending if version == "2"} == {end}
            assert http.post("/v1/customers", json={"customer_id": "hooli"}).status_code == 201
            assert (
                http.post("/v1/subscriptions", json={"customer_id": "hooli", "plan": "growth"}).status_code
                == 201
            )
            wait_until(
                lambda: entitlements.check("hooli", "api_calls", 1).limit == D(30_000_000),
                "hooli",
                timeout_s=30,
            )
            assert entitlements.check("acme", "api_calls", 20_000_001).has_access is False
            assert published() == {
                "acme": [(1, None), (1, end)],
                "globex": [(1, None), (1, end)],
                "initech": [(2, None)],
                "hooli": [(2, None)],
            }
    finally:
        entitlements.close()
