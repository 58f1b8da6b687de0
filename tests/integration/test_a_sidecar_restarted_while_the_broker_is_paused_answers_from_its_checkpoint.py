"""A sidecar restarted while the broker is paused answers from its disk checkpoint (`source: cache`,
`stale: true`, the checkpoint's `as_of`), including usage it had reported itself and not yet seen
in an aggregate; a customer it has never seen gets the configured per-feature fallback
(`source: fallback`). Once the broker answers again it is live."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from metergate.domain.periods import period_for
from metergate.domain.records import ResetPeriod
from metergate.kafka.admin import ensure_topics
from metergate.kafka.topics import Topics
from metergate.testing.waiting import wait_until
from tests.integration.entitlements_support import (
    PausableBroker,
    Sidecar,
    aggregate,
    publish_aggregates,
    publish_records,
    publish_snapshots,
)
from tests.integration.test_checks_keep_answering_while_the_broker_is_paused import snapshot

pytestmark = pytest.mark.integration


def test_restarted_sidecar_answers_from_its_checkpoint_while_the_broker_is_paused(tmp_path):
    with PausableBroker(tmp_path / "broker") as broker:
        config = {"bootstrap.servers": broker.bootstrap}
        topics = Topics("restart.")
        ensure_topics(config, topics, 4)
        now = datetime.now(UTC)
        anchor = now - timedelta(hours=1)
        period = period_for(now, anchor, ResetPeriod.DAILY)
        publish_snapshots(config, topics, snapshot("acme", anchor))
        # three events of acme (offsets 0-2 of its partition), folded by "metering" into an aggregate
        # of version 3 (= 1 + the last offset folded in); no metering runs here, nothing reads them
        publish_records(config, topics.events, [(b"acme", b"event")] * 3)
        publish_aggregates(
            config, topics, aggregate("acme", "api_calls", period.start, period.end, 90, version=3)
        )
        sidecar = Sidecar(
            broker.bootstrap, topics, tmp_path / "sidecar", fallback=json.dumps({"api_calls": True})
        )
        key = sidecar.key("app", "check", "ingest")
        sidecar.start()
        try:
            sidecar.wait_ready()
            with sidecar.client(key) as http:

                def check(customer: str, units: str) -> dict:
                    response = http.post(
                        "/v1/entitlements/check",
                        json={"customer_id": customer, "feature": "api_calls", "requested_units": units},
                    )
                    assert response.status_code == 200, response.text
                    return response.json()

                wait_until(
                    lambda: check("acme", "0")["usage"] == "90",
                    "aggregate applied",
                    timeout_s=10,
                    every_s=0.02,
                )
                reported = http.post(
                    "/v1/events",
                    json={"event_id": "r1", "customer_id": "acme", "meter": "api_calls", "quantity": "4.5"},
                )
                assert reported.json()["accepted"] == 1, reported.text
                live = check("acme", "5")
                assert (live["usage"], live["source"], live["has_access"]) == ("94.5", "live", True)
                # a never-seen customer while live and caught up has no subscription
                assert check("stranger", "1")["reason"] == "no_subscription"
            assert sidecar.stop() == 0, sidecar.tail()
            saved = json.loads(sidecar.checkpoint.read_text())
            assert sidecar.checkpoint.stat().st_mode & 0o777 == 0o600
            assert len(saved["pending"]) == 1 and saved["as_of"] is not None

            broker.pause()
            sidecar.start()
            health = http_health = None
            with sidecar.client(key) as http:
                http_health = http.get("/healthz")
                health = http_health.json()
                assert http_health.status_code == 503 and health["source"] == "cache"
                cached = check("acme", "5")
                assert (cached["source"], cached["stale"], cached["as_of"]) == ("cache", True, saved["as_of"])
                assert (cached["usage"], cached["has_access"], cached["remaining"]) == ("94.5", True, "5.5")
                assert check("acme", "6")["reason"] == "would_exceed"
                fallback = check("stranger", "1")
                assert (fallback["source"], fallback["has_access"], fallback["stale"]) == (
                    "fallback",
                    True,
                    True,
                )

                broker.resume()
                sidecar.wait_ready()
                assert check("acme", "5")["source"] == "live"
                assert check("stranger", "1")["reason"] == "no_subscription"
        finally:
            broker.resume()
            assert sidecar.stop() == 0, sidecar.tail()
