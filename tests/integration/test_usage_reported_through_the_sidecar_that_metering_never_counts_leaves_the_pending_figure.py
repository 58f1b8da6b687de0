"""Usage reported through the sidecar that metering will never count leaves the pending figure:
an event metering finds a duplicate (already counted, sent straight to Kafka) and one it rejects
(a meter the catalog does not have) are dropped from the pending usage when their receipt and
dead letter arrive, so checks settle on exactly the distinct accepted usage. The sidecar reports
on the partition metering counts the customer on: `partition_for(customer, N)` with N the
partition count of metering's state changelog (here 2), not usage.events' (4)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from metergate.domain.records import UsageEvent
from metergate.kafka.partitioner import partition_for
from metergate.testing.waiting import wait_until
from metergate.wire.codec import codec
from tests.integration.entitlements_support import Sidecar
from tests.integration.metering_support import Worker, dead_letters, publish, receipts

pytestmark = pytest.mark.integration

STATE_PARTITIONS = 2  # metering's changelog; usage.events has 4 (the topics fixture)


def pending(http: httpx.Client) -> int:
    text = http.get("/metrics").text
    return int(float(re.search(r"^metergate_entitlements_pending_events (\S+)$", text, re.M).group(1)))


def test_duplicates_and_rejections_reported_through_the_sidecar_leave_the_pending_figure(
    kafka_bootstrap, kafka_config, topics, tmp_path
):
    # a customer whose partition differs between the two counts (murmur2 % 4 in {2, 3})
    customer = next(f"c{i}" for i in range(100) if partition_for(f"c{i}", 4) >= STATE_PARTITIONS)
    canonical = partition_for(customer, STATE_PARTITIONS)
    worker = Worker(kafka_bootstrap, topics, tmp_path / "worker")
    admin_client = AdminClient(kafka_config)
    created = admin_client.create_topics([NewTopic(worker.changelog, num_partitions=STATE_PARTITIONS)])
    created[worker.changelog].result(30)
    now = datetime.now(UTC).replace(microsecond=0)
    anchor = now - timedelta(hours=1)
    publish(
        {
            "meters": {"api_calls": {"aggregation": "SUM"}},
            "features": {"api_calls": {"kind": "metered", "meter": "api_calls"}},
            "plans": {"small": {"features": {"api_calls": {"limit": 100, "enforcement": "hard"}}}},
            "subscriptions": {
                customer: {"plan": "small", "anchor": anchor.isoformat(), "reset_period": "daily"}
            },
        },
        kafka_config,
        topics,
    )
    stamp = now - timedelta(minutes=5)
    sidecar = Sidecar(kafka_bootstrap, topics, tmp_path / "sidecar")
    app, ops = sidecar.key("app", "check", "ingest"), sidecar.key("ops", "admin")
    sidecar.start()
    worker.start()
    try:
        sidecar.wait_ready()
        with sidecar.client(app) as http, sidecar.client(ops) as admin:

            def usage() -> str:
                response = http.post(
                    "/v1/entitlements/check",
                    json={"customer_id": customer, "feature": "api_calls", "requested_units": 0},
                )
                assert response.status_code == 200, response.text
                return str(response.json()["usage"])

            # "first" is counted straight from Kafka, on the partition metering counts it on
            producer = Producer(kafka_config)
            first = UsageEvent(
                event_id="first", customer_id=customer, meter="api_calls", quantity=3, timestamp=stamp
            )
            producer.produce(
                topics.events, codec(UsageEvent).encode(first), customer.encode(), partition=canonical
            )
            assert producer.flush(30) == 0
            wait_until(
                lambda: usage() == "3",
                "metering counted the event sent straight to Kafka",
                timeout_s=90,
                every_s=0.02,
            )

            def event(event_id: str, meter: str, quantity: int) -> dict:
                return {
                    "event_id": event_id,
                    "customer_id": customer,
                    "meter": meter,
                    "quantity": quantity,
                    "timestamp": stamp.isoformat(),
                }

            reply = http.post(
                "/v1/events",
                json=[
                    event("first", "api_calls", 3),
                    event("ghost", "no_such_meter", 7),
                    event("new", "api_calls", 2),
                ],
            )
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert (body["accepted"], body["duplicate"], body["rejected"]) == (3, 0, 0), body
            positions = {e["event_id"]: (e["partition"], e["offset"]) for e in body["events"]}
            assert {p for p, _ in positions.values()} == {canonical}

            wait_until(
                lambda: pending(admin) == 0,
                "pending usage settled by aggregates, receipts, dead letters",
                timeout_s=90,
                every_s=0.02,
            )
            # the distinct accepted usage of the meter: first (3) + new (2); the copy of first and
            # the event of an unknown meter are not in it
            assert usage() == "5"
        duplicate = [r for r in receipts(kafka_config, topics) if r.event_id == "first"]
        assert [(r.duplicate.partition, r.duplicate.offset) for r in duplicate] == [positions["first"]]
        rejected = [d for d in dead_letters(kafka_config, topics) if d.reason == "unknown_meter"]
        assert [(d.source.partition, d.source.offset) for d in rejected] == [positions["ghost"]]
    finally:
        assert worker.stop() == 0, worker.tail()
        assert sidecar.stop() == 0, sidecar.tail()
