"""An upgrade published to the catalog changes the next checks: a customer denied at the starter
plan's hard limit is allowed once the catalog moves it to a bigger plan, and a catalog change
reaches the sidecar's checks within about half a second here (printed: each publication, producer
included, to the first check that reflects it)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from metergate.domain.periods import period_for
from metergate.domain.records import ResetPeriod
from metergate.testing.waiting import wait_until
from tests.integration.entitlements_support import Sidecar, aggregate, publish_aggregates, publish_records
from tests.integration.metering_support import publish

pytestmark = pytest.mark.integration


def catalog(plan: str, anchor: datetime) -> dict:
    return {
        "meters": {"api_calls": {"aggregation": "SUM"}},
        "features": {"api_calls": {"kind": "metered", "meter": "api_calls"}, "sso": {"kind": "boolean"}},
        "plans": {
            "starter": {"features": {"api_calls": {"limit": 100, "enforcement": "hard"}}},
            "growth": {"features": {"api_calls": {"limit": 1000, "enforcement": "hard"}, "sso": True}},
        },
        "subscriptions": {"acme": {"plan": plan, "anchor": anchor.isoformat(), "reset_period": "daily"}},
    }


def test_an_upgrade_changes_the_next_checks_within_a_second(kafka_bootstrap, kafka_config, topics, tmp_path):
    now = datetime.now(UTC).replace(microsecond=0)
    anchor = now - timedelta(hours=1)
    period = period_for(now, anchor, ResetPeriod.DAILY)
    publish(catalog("starter", anchor), kafka_config, topics)
    publish_records(kafka_config, topics.events, [(b"acme", b"event")] * 100)  # offsets 0-99, folded below
    publish_aggregates(
        kafka_config, topics, aggregate("acme", "api_calls", period.start, period.end, 100, version=100)
    )
    sidecar = Sidecar(kafka_bootstrap, topics, tmp_path / "sidecar")
    key = sidecar.key("app", "check")
    sidecar.start()
    try:
        sidecar.wait_ready()
        with sidecar.client(key) as http:

            def check(feature: str = "api_calls") -> dict:
                body = {"customer_id": "acme", "feature": feature, "requested_units": "1"}
                return http.post("/v1/entitlements/check", json=body).json()

            wait_until(lambda: check()["usage"] == "100", "usage applied", timeout_s=10, every_s=0.02)
            before = check()
            assert (before["has_access"], before["reason"], before["limit"]) == (
                False,
                "limit_exceeded",
                "100",
            )
            assert check("sso")["reason"] == "unknown_feature"

            latencies = []
            for plan, limit in (("growth", "1000"), ("starter", "100"), ("growth", "1000")) * 3:
                published = time.perf_counter()
                publish(catalog(plan, anchor), kafka_config, topics)
                wait_until(
                    lambda limit=limit: check()["limit"] == limit,
                    f"{plan} visible",
                    timeout_s=5,
                    every_s=0.02,
                )
                latencies.append(time.perf_counter() - published)
            after = check()
            assert (after["has_access"], after["reason"], after["remaining"]) == (True, "ok", "900")
            assert check("sso")["has_access"] is True
            latencies.sort()
            # a figure, not an assertion (no test depends on machine speed): run with -s to see it
            print(
                f"\ncatalog change -> check: p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
            )
    finally:
        assert sidecar.stop() == 0, sidecar.tail()
