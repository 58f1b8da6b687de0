"""Example enforcement service: the pattern an application copies to stop serving at a hard limit.

Consumes `entitlements.snapshots` (what each customer may use) and `usage.limits` (what usage did)
from the beginning into memory, and answers over HTTP:

    GET /check?customer=acme&feature=api_calls  -> {"allowed": false, "reason": "hard limit of ... reached"}
    GET /state                                  -> blocked pairs and every limit event received
    GET /healthz                                -> {"ok": true, "caught_up": ...}

Rules are in `metergate.domain.enforcement`. The state is rebuilt from the topics at each start
(snapshots are compacted; limit events are de-duplicated by limit_event_id), so nothing is stored.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlparse

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client import Counter
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from metergate.domain.enforcement import EnforcementState
from metergate.domain.records import EntitlementSnapshot, LimitEvent, now_utc
from metergate.errors import InvalidInput
from metergate.metrics import serve
from metergate.settings import KafkaSettings, MetricsSettings
from metergate.wire.codec import codec

log = logging.getLogger("metergate.enforcement")

LIMIT_EVENTS = Counter("metergate_enforcement_limit_events_total", "Limit events applied", ["kind"])
CHECKS = Counter("metergate_enforcement_checks_total", "Entitlement checks answered", ["allowed"])
SKIPPED = Counter("metergate_enforcement_skipped_total", "Records not applied", ["reason"])


class EnforcementSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METERGATE_ENFORCEMENT_", frozen=True, extra="ignore")

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8181, ge=0, le=65535)


class EnforcementService:
    """`clock` is the only reader of the time (a block lifts when its period ends): tests inject one."""

    def __init__(
        self, kafka: KafkaSettings, settings: EnforcementSettings, clock: Callable[[], datetime] = now_utc
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.clock = clock
        self.state = EnforcementState()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.caught_up = threading.Event()
        self.http: ThreadingHTTPServer | None = None

    # -- consuming ---------------------------------------------------------------------------------
    def consumer_config(self) -> dict[str, str | bool]:
        """librdkafka settings of the consumer: the shared Kafka settings (security included) + its group."""
        return {
            **self.kafka.client_config(),
            "group.id": "metergate-enforcement",
            "enable.auto.commit": False,
        }

    def consume(self) -> None:
        consumer = Consumer(self.consumer_config())
        try:
            topics = [self.kafka.topics.snapshots, self.kafka.topics.limits]
            assignment = []
            for topic in topics:
                partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
                assignment += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
            consumer.assign(assignment)
            idle_since = time.monotonic()
            while not self.stopping.is_set():
                messages = consumer.consume(1000, timeout=0.2)
                if not messages and time.monotonic() - idle_since > 1.0:
                    self.caught_up.set()
                for message in messages:
                    idle_since = time.monotonic()
                    if message.error():
                        continue
                    self._apply(message.topic() or "", message.value())
        finally:
            consumer.close()

    def _apply(self, topic: str, value: bytes | None) -> None:
        try:
            if topic == self.kafka.topics.snapshots:
                snapshot = codec(EntitlementSnapshot).decode(value)
                with self.lock:
                    self.state.apply_snapshot(snapshot)
            else:
                event = codec(LimitEvent).decode(value)
                with self.lock:
                    applied = self.state.apply_limit_event(event)
                if applied:
                    LIMIT_EVENTS.labels(event.kind.value).inc()
                    log.info(
                        "%s %s %s usage=%s", event.kind.value, event.customer_id, event.feature, event.usage
                    )
                else:
                    SKIPPED.labels("resent").inc()
        except InvalidInput as error:  # not ours to fix: count it and go on
            SKIPPED.labels(error.reason).inc()
            log.warning("skipped a record on %s: %s", topic, error)

    # -- answering ---------------------------------------------------------------------------------
    def check(self, customer: str, feature: str) -> dict[str, Any]:
        with self.lock:
            decision = self.state.check(customer, feature, self.clock())
        CHECKS.labels(str(decision.allowed).lower()).inc()
        return {"customer": customer, "feature": feature, **decision.__dict__}

    def snapshot_of_state(self) -> dict[str, Any]:
        with self.lock:
            now = self.clock()
            return {
                "blocked": [{"customer": c, "feature": f} for c, f in self.state.blocked(now)],
                "limit_events": [json.loads(e.model_dump_json()) for e in self.state.received],
                "customers": sorted(self.state.snapshots),
            }

    def serve_http(self) -> ThreadingHTTPServer:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/check":
                    if "customer" not in query or "feature" not in query:
                        self._send(400, {"error": "query needs customer=...&feature=..."})
                        return
                    self._send(200, service.check(query["customer"], query["feature"]))
                elif url.path == "/state":
                    self._send(200, service.snapshot_of_state())
                elif url.path == "/healthz":
                    self._send(200, {"ok": True, "caught_up": service.caught_up.is_set()})
                else:
                    self._send(404, {"error": f"no such path {url.path}; try /check, /state, /healthz"})

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body, default=str).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug(format, *args)

        self.http = ThreadingHTTPServer((self.settings.http_host, self.settings.http_port), Handler)
        threading.Thread(target=self.http.serve_forever, name="http", daemon=True).start()
        return self.http

    def stop(self) -> None:
        self.stopping.set()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            self.http = None


def run() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kafka, settings = KafkaSettings(), EnforcementSettings()
    serve(MetricsSettings())
    service = EnforcementService(kafka, settings)
    http = service.serve_http()
    log.info("enforcement: http://%s:%d/check?customer=...&feature=...", *http.server_address[:2])

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        service.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        service.consume()
    finally:
        service.stop()
