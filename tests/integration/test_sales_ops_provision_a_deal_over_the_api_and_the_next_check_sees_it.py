"""Sales ops provision a deal over the admin API and the next check sees it: the running admin
service (real HTTP, real PostgreSQL) writes the subscription with its outbox row, its relay
publishes the terms to entitlements.snapshots on the real broker, and an in-process
`Entitlements` answers with the deal's plan; an upgrade over the API raises the limit the check
enforces, and a cancellation ends access at its moment, never before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest

from metergate.entitlements import Entitlements, EntitlementsSettings
from metergate.settings import KafkaSettings
from metergate.testing.waiting import wait_until
from tests.integration.admin_support import AdminApi

pytestmark = pytest.mark.integration


def test_sales_ops_provision_a_deal_over_the_api_and_the_next_check_sees_it(
    database_url, db_schema, kafka_bootstrap, topics, tmp_path
):
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=topics.prefix)
    entitlements = Entitlements(EntitlementsSettings(kafka=kafka, checkpoint_path=None))
    try:
        assert entitlements.wait_caught_up(60)
        with AdminApi(
            database_url, db_schema, tmp_path, kafka_bootstrap=kafka_bootstrap, topics=topics
        ) as api:
            with api.client(api.key("crm", "admin")) as http:
                for body in (
                    {"feature": "api_calls", "kind": "metered", "meter": "api_calls"},
                    {"feature": "sso", "kind": "boolean"},
                ):
                    assert http.post("/v1/features", json=body).status_code == 201
                for plan, fee, limit, sso in (
                    ("growth", "1000.00", 100, False),
                    ("scale", "2500.00", 500, True),
                ):
                    body = {
                        "base_fee": fee,
                        "features": {
                            "api_calls": {"limit": limit, "enforcement": "hard"},
                            "sso": {"enabled": sso},
                        },
                    }
                    assert http.post(f"/v1/plans/{plan}/versions", json=body).status_code == 201
                assert entitlements.check("acme", "api_calls", 1).reason.value == "no_subscription"

                assert http.post("/v1/customers", json={"customer_id": "acme"}).status_code == 201
                assert (
                    http.post("/v1/subscriptions", json={"customer_id": "acme", "plan": "growth"}).status_code
                    == 201
                )
                wait_until(
                    lambda: entitlements.check("acme", "api_calls", 1).limit == D(100),
                    "the deal",
                    timeout_s=30,
                )
                assert entitlements.check("acme", "api_calls", 100).has_access
                denied = entitlements.check("acme", "api_calls", 101)
                assert (denied.has_access, denied.reason.value) == (False, "would_exceed")
                assert not entitlements.check("acme", "sso").has_access

                assert http.post("/v1/subscriptions/acme/changes", json={"plan": "scale"}).status_code == 200
                wait_until(
                    lambda: entitlements.check("acme", "api_calls", 1).limit == D(500),
                    "the upgrade",
                    timeout_s=30,
                )
                assert entitlements.check("acme", "sso").has_access

                moment = datetime.now(UTC) + timedelta(seconds=2)
                cancelled = http.post("/v1/subscriptions/acme/cancel", json={"at": moment.isoformat()})
                assert cancelled.status_code == 200, cancelled.text
                wait_until(
                    lambda: not entitlements.check("acme", "sso").has_access,
                    "access to end at the moment",
                    timeout_s=30,
                )
                assert datetime.now(UTC) >= moment  # never before the cancellation time
    finally:
        entitlements.close()
