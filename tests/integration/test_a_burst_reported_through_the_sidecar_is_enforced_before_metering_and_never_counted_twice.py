"""A burst reported through the sidecar is enforced before metering catches up, and never counted
twice after it does: every check from the first report to the last aggregate sees exactly the
reported total (pending usage leaves exactly when the aggregate that includes it arrives)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from metergate.testing.waiting import wait_until
from tests.integration.entitlements_support import Sidecar
from tests.integration.metering_support import Worker, latest_aggregates, publish

pytestmark = pytest.mark.integration


def catalog(anchor: datetime) -> dict:
    return {
        "meters": {"api_calls": {"aggregation": "SUM"}},
        "features": {"api_calls": {"kind": "metered", "meter": "api_calls"}},
        "plans": {"small": {"features": {"api_calls": {"limit": 10, "enforcement": "hard"}}}},
        "subscriptions": {
            "burst-co": {"plan": "small", "anchor": anchor.isoformat(), "reset_period": "daily"},
            "cloud-co": {"plan": "small", "anchor": anchor.isoformat(), "reset_period": "daily"},
        },
    }


def pending(http: httpx.Client) -> int:
    text = http.get("/metrics").text
    return int(float(re.search(r"^metergate_entitlements_pending_events (\S+)$", text, re.M).group(1)))


def test_burst_is_enforced_before_metering_and_counted_once_after(
    kafka_bootstrap, kafka_config, topics, tmp_path
):
    now = datetime.now(UTC).replace(microsecond=0)
    anchor = now - timedelta(hours=1)
    publish(catalog(anchor), kafka_config, topics)
    sidecar = Sidecar(kafka_bootstrap, topics, tmp_path / "sidecar")
    app, ops = sidecar.key("app", "check", "ingest"), sidecar.key("ops", "admin")
    sidecar.start()
    worker = Worker(kafka_bootstrap, topics, tmp_path / "worker")
    try:
        sidecar.wait_ready()
        with sidecar.client(app) as http, sidecar.client(ops) as admin:

            def usage(customer: str, units: str = "1") -> dict:
                response = http.post(
                    "/v1/entitlements/check",
                    json={"customer_id": customer, "feature": "api_calls", "requested_units": units},
                )
                assert response.status_code == 200, response.text
                return response.json()

            stamp = (now - timedelta(minutes=5)).isoformat()
            burst = [
                {
                    "event_id": f"b{i}",
                    "customer_id": "burst-co",
                    "meter": "api_calls",
                    "quantity": 1,
                    "timestamp": stamp,
                }
                for i in range(10)
            ]
            extra = [
                {
                    "event_id": "b3",
                    "customer_id": "burst-co",
                    "meter": "api_calls",
                    "quantity": 1,
                    "timestamp": stamp,
                },
                {
                    "event_id": "bad",
                    "customer_id": "burst-co",
                    "meter": "api_calls",
                    "quantity": -2,
                    "timestamp": stamp,
                },
            ]
            reply = http.post("/v1/events", json=burst + extra)
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert (body["accepted"], body["duplicate"], body["rejected"]) == (10, 1, 1)
            assert body["events"][10]["status"] == "duplicate" and body["events"][10]["event_id"] == "b3"
            rejected = body["events"][11]
            assert (rejected["status"], rejected["field"]) == ("rejected", "quantity")
            assert rejected["message"] == "quantity: Input should be greater than or equal to 0 (got -2)"
            # the next check already counts the burst: metering is not even running
            at_limit = usage("burst-co")
            assert (at_limit["usage"], at_limit["has_access"], at_limit["reason"]) == (
                "10",
                False,
                "limit_exceeded",
            )
            assert usage("burst-co", "0")["has_access"] is True

            cloud = [
                {
                    "specversion": "1.0",
                    "id": f"c{i}",
                    "source": "billing-test",
                    "type": "api_calls",
                    "subject": "cloud-co",
                    "time": stamp,
                    "data": {"quantity": "2.5"},
                }
                for i in range(2)
            ]
            reply = http.post(
                "/v1/events",
                content=httpx.Request("POST", "/", json=cloud).content,
                headers={"Content-Type": "application/cloudevents-batch+json"},
            )
            assert reply.status_code == 200 and reply.json()["accepted"] == 2, reply.text
            assert (
                usage("cloud-co", "5")["usage"] == "5" and usage("cloud-co", "6")["reason"] == "would_exceed"
            )
            assert pending(admin) == 12

            worker.start()
            seen = set()

            def metered() -> bool:
                seen.add((usage("burst-co")["usage"], usage("cloud-co")["usage"]))
                return pending(admin) == 0

            wait_until(metered, "pending usage dropped by the aggregates", timeout_s=60, every_s=0.02)
            seen.add((usage("burst-co")["usage"], usage("cloud-co")["usage"]))
            # never counted twice, never a gap: every answer during the hand-over saw the same totals
            assert seen == {("10", "5")}
        totals = {a.customer_id: a.value for a in latest_aggregates(kafka_config, topics).values()}
        assert totals == {"burst-co": 10, "cloud-co": 5}
    finally:
        if worker.process is not None:
            assert worker.stop() == 0, worker.tail()
        assert sidecar.stop() == 0, sidecar.tail()
