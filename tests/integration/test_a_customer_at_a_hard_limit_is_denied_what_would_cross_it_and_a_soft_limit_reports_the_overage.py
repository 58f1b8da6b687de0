"""A customer at a hard limit is denied the request that would cross it and allowed a smaller one;
a soft limit allows and reports the overage. Real metering worker, real sidecar over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metergate.domain.records import UsageEvent
from metergate.testing.waiting import wait_until
from tests.integration.entitlements_support import Sidecar
from tests.integration.metering_support import EventProducer, Worker, publish

pytestmark = pytest.mark.integration


def catalog(anchor: datetime) -> dict:
    return {
        "meters": {"api_calls": {"aggregation": "SUM"}},
        "features": {
            "api_calls": {"kind": "metered", "meter": "api_calls"},
            "sso": {"kind": "boolean"},
        },
        "plans": {
            "hard": {"features": {"api_calls": {"limit": 100, "enforcement": "hard"}, "sso": True}},
            "soft": {"features": {"api_calls": {"limit": 50, "enforcement": "soft"}}},
        },
        "subscriptions": {
            "hard-co": {"plan": "hard", "anchor": anchor.isoformat(), "reset_period": "daily"},
            "soft-co": {"plan": "soft", "anchor": anchor.isoformat(), "reset_period": "daily"},
        },
    }


def test_hard_limit_denies_what_would_cross_it_and_soft_limit_reports_the_overage(
    kafka_bootstrap, kafka_config, topics, tmp_path
):
    now = datetime.now(UTC).replace(microsecond=0)
    anchor = now - timedelta(hours=1)  # a daily period that began an hour ago: the test runs inside it
    publish(catalog(anchor), kafka_config, topics)
    producer = EventProducer(kafka_config, topics)
    for customer, units in (("hard-co", 95), ("soft-co", 60)):
        for index in range(units // 5):
            producer.send(
                UsageEvent(
                    event_id=f"{customer}-{index}",
                    customer_id=customer,
                    meter="api_calls",
                    quantity=Decimal(5),
                    timestamp=now - timedelta(minutes=30),
                )
            )
    producer.flush()
    worker = Worker(kafka_bootstrap, topics, tmp_path / "worker").start()
    sidecar = Sidecar(kafka_bootstrap, topics, tmp_path / "sidecar")
    key = sidecar.key("app", "check")
    sidecar.start()
    try:
        sidecar.wait_ready()
        with sidecar.client(key) as http:

            def check(customer: str, units: str, feature: str = "api_calls") -> dict:
                response = http.post(
                    "/v1/entitlements/check",
                    json={"customer_id": customer, "feature": feature, "requested_units": units},
                )
                assert response.status_code == 200, response.text
                return response.json()

            # metering folds the 19 events of hard-co into 95
            wait_until(
                lambda: check("hard-co", "0")["usage"] == "95",
                "usage of hard-co reaches 95",
                timeout_s=60,
                every_s=0.02,
            )
            denied = check("hard-co", "6")
            assert (denied["has_access"], denied["reason"]) == (False, "would_exceed")
            assert (denied["usage"], denied["limit"], denied["remaining"], denied["overage_units"]) == (
                "95",
                "100",
                "5",
                "1",
            )
            assert denied["period_start"] == anchor.isoformat()
            assert denied["period_end"] == (anchor + timedelta(days=1)).isoformat()
            allowed = check("hard-co", "5")
            assert (allowed["has_access"], allowed["reason"], allowed["remaining"]) == (True, "ok", "5")
            sso = check("hard-co", "1", "sso")
            assert (sso["has_access"], sso["kind"]) == (True, "boolean")

            wait_until(
                lambda: check("soft-co", "0")["usage"] == "60",
                "usage of soft-co reaches 60",
                timeout_s=60,
                every_s=0.02,
            )
            soft = check("soft-co", "3")
            assert (soft["has_access"], soft["reason"], soft["overage_units"], soft["remaining"]) == (
                True,
                "soft_limit_exceeded",
                "13",
                "0",
            )
            unknown = check("nobody", "1")
            assert (unknown["has_access"], unknown["reason"], unknown["source"]) == (
                False,
                "no_subscription",
                "live",
            )
            assert unknown["stale"] is False
    finally:
        assert sidecar.stop() == 0, sidecar.tail()
        assert worker.stop() == 0, worker.tail()
