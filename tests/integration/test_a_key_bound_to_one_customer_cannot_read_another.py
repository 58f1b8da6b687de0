"""A key bound to one customer cannot read another (403); no key is 401; a key without the scope is
403; a revoked key is refused within a second; no key ever appears in the sidecar's log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from metergate.sdk import EntitlementsClient, SidecarRefused
from metergate.testing.waiting import wait_until
from tests.integration.entitlements_support import Sidecar
from tests.integration.metering_support import publish

pytestmark = pytest.mark.integration


def test_a_bound_key_sees_only_its_customer(kafka_bootstrap, kafka_config, topics, tmp_path):
    anchor = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    publish(
        {
            "meters": {"api_calls": {"aggregation": "SUM"}},
            "features": {"api_calls": {"kind": "metered", "meter": "api_calls"}, "sso": {"kind": "boolean"}},
            "plans": {"pro": {"features": {"api_calls": {"limit": 10, "enforcement": "hard"}, "sso": True}}},
            "subscriptions": {
                c: {"plan": "pro", "anchor": anchor, "reset_period": "daily"} for c in ("acme", "globex")
            },
        },
        kafka_config,
        topics,
    )
    sidecar = Sidecar(kafka_bootstrap, topics, tmp_path / "sidecar")
    acme = sidecar.key("acme-app", "check", "ingest", customers=["acme"])
    ingest_only = sidecar.key("collector", "ingest")
    admin = sidecar.key("ops", "admin")
    sidecar.start()
    try:
        sidecar.wait_ready()
        body = {"customer_id": "globex", "feature": "sso"}
        with sidecar.client(acme) as http:
            assert (
                http.post("/v1/entitlements/check", json={**body, "customer_id": "acme"}).json()["has_access"]
                is True
            )
            denied = http.post("/v1/entitlements/check", json=body)
            assert denied.status_code == 403
            assert denied.json() == {
                "reason": "forbidden",
                "field": "customer_id",
                "message": "customer_id: the key 'acme-app' is not bound to customer 'globex'",
            }
            assert http.get("/v1/customers/globex/entitlements").status_code == 403
            mine = http.get("/v1/customers/acme/entitlements").json()
            assert [f["feature"] for f in mine["features"]] == ["api_calls", "sso"]
            batch = http.post(
                "/v1/entitlements/check:batch", json={"checks": [{**body, "customer_id": "acme"}, body]}
            )
            assert (batch.status_code, batch.json()["field"]) == (403, "checks.1.customer_id")
            events = http.post(
                "/v1/events",
                json={"event_id": "g1", "customer_id": "globex", "meter": "api_calls", "quantity": 1},
            ).json()
            assert (events["rejected"], events["events"][0]["reason"]) == (1, "forbidden")
            assert http.get("/metrics").status_code == 403
        assert httpx.post(f"{sidecar.url}/v1/entitlements/check", json=body).status_code == 401
        wrong = httpx.post(
            f"{sidecar.url}/v1/entitlements/check",
            json=body,
            headers={"X-API-Key": acme[:-1] + ("1" if acme.endswith("0") else "0")},
        )
        assert wrong.status_code == 401
        bearer = httpx.post(
            f"{sidecar.url}/v1/entitlements/check", json=body, headers={"Authorization": f"Bearer {admin}"}
        )
        assert bearer.status_code == 200
        with sidecar.client(ingest_only) as http:
            refused = http.post("/v1/entitlements/check", json=body)
            assert (refused.status_code, refused.json()["message"]) == (
                403,
                "the key 'collector' lacks the 'check' scope",
            )
        # the SDK client raises the refusal instead of falling back, and hides the key
        client = EntitlementsClient(sidecar.url, api_key=acme, timeout_s=5, fallback={"*": True})
        with client, pytest.raises(SidecarRefused) as refusal:
            client.check("globex", "sso")
        assert refusal.value.status == 403 and acme not in repr(client)
        sidecar.keys.revoke("acme-app")
        wait_until(
            lambda: (
                httpx.post(
                    f"{sidecar.url}/v1/entitlements/check", json=body, headers={"X-API-Key": acme}
                ).status_code
                == 401
            ),
            "revoked key refused",
            timeout_s=5,
            every_s=0.02,
        )
    finally:
        assert sidecar.stop() == 0, sidecar.tail()
    log = sidecar.log.read_text()
    for secret in (acme, ingest_only, admin):
        assert secret not in log and secret.rsplit("_", 1)[1] not in log
    stored = sidecar.keys_file.read_text()
    assert all(secret.rsplit("_", 1)[1] not in stored for secret in (acme, ingest_only, admin))
    assert sidecar.keys_file.stat().st_mode & 0o777 == 0o600
