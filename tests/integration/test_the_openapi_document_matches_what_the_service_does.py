"""The OpenAPI document matches what the service does: schemathesis generates requests from the
document (valid and invalid) against the running sidecar and checks every response against it
(status codes, content types, bodies, no server error)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from metergate.kafka.admin import ensure_topics
from metergate.kafka.topics import Topics
from metergate_services.entitlements.api import openapi
from tests.integration.entitlements_support import Sidecar
from tests.integration.metering_support import publish

pytestmark = pytest.mark.integration

schema = schemathesis.openapi.from_dict(openapi())


@pytest.fixture(scope="module")
def running(kafka_bootstrap, kafka_config, tmp_path_factory) -> Iterator[tuple[Sidecar, str]]:
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    ensure_topics(kafka_config, topics, 4)
    anchor = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    publish(
        {
            "meters": {"api_calls": {"aggregation": "SUM"}},
            "features": {"api_calls": {"kind": "metered", "meter": "api_calls"}, "sso": {"kind": "boolean"}},
            "plans": {"pro": {"features": {"api_calls": {"limit": 10, "enforcement": "hard"}, "sso": True}}},
            "subscriptions": {"acme": {"plan": "pro", "anchor": anchor, "reset_period": "daily"}},
        },
        kafka_config,
        topics,
    )
    sidecar = Sidecar(kafka_bootstrap, topics, tmp_path_factory.mktemp("openapi"))
    key = sidecar.key("schemathesis", "admin")
    sidecar.start()
    try:
        sidecar.wait_ready()
        yield sidecar, key
    finally:
        assert sidecar.stop() == 0, sidecar.tail()


def test_the_served_document_is_the_one_checked(running):
    sidecar, _ = running
    assert httpx.get(f"{sidecar.url}/openapi.json").json() == openapi()


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case, running):
    sidecar, key = running
    case.call_and_validate(base_url=sidecar.url, headers={"X-API-Key": key})
