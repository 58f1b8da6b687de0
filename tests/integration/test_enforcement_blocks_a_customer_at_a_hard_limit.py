"""The example enforcement service reads snapshots and limit events from Kafka and answers /check over HTTP."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest

from metergate.domain.records import EntitlementSnapshot, LimitEvent, LimitKind
from metergate.kafka.producer import DeliveryTracker, make_producer, produce
from metergate.settings import KafkaSettings
from metergate.wire.codec import codec
from metergate_services.enforcement.main import EnforcementService, EnforcementSettings
from tests.unit.test_enforcement_rules import NOW, limit, snapshot

pytestmark = pytest.mark.integration


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.loads(response.read())


def test_enforcement_service(kafka_config, topics):
    producer, tracker = make_producer(kafka_config), DeliveryTracker()
    produce(producer, topics.snapshots, b"acme", codec(EntitlementSnapshot).encode(snapshot()), tracker)
    for event in (
        limit(LimitKind.THRESHOLD_CROSSED, 80, usage=80),
        limit(LimitKind.LIMIT_REACHED),
        limit(LimitKind.LIMIT_REACHED),
    ):  # the last one re-sent
        produce(producer, topics.limits, b"acme", codec(LimitEvent).encode(event), tracker)
    producer.flush(30)
    tracker.raise_failures()

    kafka = KafkaSettings(bootstrap=kafka_config["bootstrap.servers"], topic_prefix=topics.prefix)
    service = EnforcementService(kafka, EnforcementSettings(http_port=0), clock=lambda: NOW)
    port = service.serve_http().server_address[1]
    consumer = threading.Thread(target=service.consume)
    consumer.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _get(port, "/healthz")["caught_up"]:
            time.sleep(0.1)
        # the service's clock is the fixtures' NOW, inside the period of the limit events
        service_state = _get(port, "/state")
        assert service_state["blocked"] == [{"customer": "acme", "feature": "api_calls"}]
        assert [e["kind"] for e in service_state["limit_events"]] == ["threshold_crossed", "limit_reached"]
        assert _get(port, "/check?customer=acme&feature=sso")["allowed"] is True
        assert _get(port, "/check?customer=globex&feature=sso")["allowed"] is False
        with pytest.raises(urllib.error.HTTPError) as error:
            _get(port, "/check?customer=acme")
        assert error.value.code == 400
        error.value.close()
    finally:
        service.stop()
        consumer.join(timeout=10)
