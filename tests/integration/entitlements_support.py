"""Helpers of the entitlement tests: the sidecar as a subprocess, keys, snapshots and aggregates on Kafka."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from metergate.domain.records import (
    Aggregation,
    EntitlementSnapshot,
    UsageAggregate,
    aggregate_key,
    now_utc,
)
from metergate.embedded.processes import ChildProcess, free_port
from metergate.entitlements.keys import KeyStore
from metergate.kafka.producer import make_producer, send
from metergate.kafka.topics import Topics
from metergate.testing.waiting import wait_until
from metergate.wire.codec import codec

ROOT = Path(__file__).resolve().parents[2]


def publish_records(
    kafka_config: Mapping[str, Any], topic: str, records: Iterable[tuple[bytes, bytes]]
) -> None:
    send(make_producer(kafka_config), topic, records)


def publish_snapshots(
    kafka_config: Mapping[str, Any], topics: Topics, *snapshots: EntitlementSnapshot
) -> None:
    encode = codec(EntitlementSnapshot).encode
    publish_records(kafka_config, topics.snapshots, [(s.customer_id.encode(), encode(s)) for s in snapshots])


def aggregate(
    customer_id: str, meter: str, start: datetime, end: datetime, value: Decimal | int, version: int
) -> UsageAggregate:
    return UsageAggregate(
        customer_id=customer_id,
        meter=meter,
        aggregation=Aggregation.SUM,
        period_start=start,
        period_end=end,
        value=Decimal(value),
        event_count=1,
        version=version,
        last_event_at=start,
        last_event_id=f"e{version}",
        updated_at=now_utc(),
    )


def publish_aggregates(kafka_config: Mapping[str, Any], topics: Topics, *aggregates: UsageAggregate) -> None:
    encode = codec(UsageAggregate).encode
    publish_records(
        kafka_config,
        topics.aggregates,
        [(aggregate_key(a.customer_id, a.meter, a.period_start).encode(), encode(a)) for a in aggregates],
    )


class Sidecar:
    """`python -m metergate_services.entitlements.main` against a test's topics, on a free port."""

    def __init__(self, kafka_bootstrap: str, topics: Topics, directory: Path, **settings: Any) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.keys_file = directory / "keys.json"
        self.checkpoint = directory / "checkpoint.json"
        self.log = directory / "sidecar.log"
        self.env = {
            **os.environ,
            "METERGATE_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "METERGATE_KAFKA_TOPIC_PREFIX": topics.prefix,
            "METERGATE_ENTITLEMENTS_HTTP_PORT": str(self.port),
            "METERGATE_ENTITLEMENTS_KEYS_FILE": str(self.keys_file),
            "METERGATE_ENTITLEMENTS_CHECKPOINT_PATH": str(self.checkpoint),
            "METERGATE_ENTITLEMENTS_CHECKPOINT_INTERVAL_S": "0.5",
        }
        self.env.update({f"METERGATE_ENTITLEMENTS_{k.upper()}": str(v) for k, v in settings.items()})
        self.keys = KeyStore(self.keys_file)
        self.child: ChildProcess | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def key(self, name: str, *scopes: str, customers: Iterable[str] = ()) -> str:
        return self.keys.create(name, scopes, customers)[1]

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return None if self.child is None else self.child.process

    def start(self) -> Sidecar:
        self.child = ChildProcess(
            "entitlements sidecar",
            [sys.executable, "-m", "metergate_services.entitlements.main"],
            self.log,
            env=self.env,
            cwd=ROOT,
        )
        self.child.start()
        wait_until(
            self._listening,
            f"sidecar listening on {self.port}",
            timeout_s=30,
            every_s=0.02,
            details=self.tail,
        )
        return self

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"sidecar exited with {self.process.returncode}:\n{self.tail()}")
        try:
            httpx.get(f"{self.url}/healthz", timeout=1)
            return True
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout_s: float = 30) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            response = httpx.get(f"{self.url}/healthz", timeout=2)
            return response.json() if response.status_code == 200 else None

        return wait_until(ready, "sidecar ready", timeout_s=timeout_s, every_s=0.02, details=self.tail)

    def stop(self) -> int:
        child, self.child = self.child, None
        if child is None:
            return 0
        if not child.stop(30):
            raise AssertionError(f"sidecar did not stop on SIGTERM within 30 s:\n{self.tail()}")
        return child.wait(0)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": key}, timeout=10)


class PausableBroker:
    """A broker of the test's own (embedded tansu), so it can be paused (SIGSTOP) without pausing
    the session's broker under other tests."""

    def __init__(self, directory: Path) -> None:
        from metergate.embedded.broker import EmbeddedBroker

        self.broker = EmbeddedBroker(directory)
        self.paused = False

    def __enter__(self) -> PausableBroker:
        self.broker.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.resume()
        self.broker.stop()

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def pause(self) -> None:
        assert self.broker.pid is not None
        os.kill(self.broker.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused and self.broker.pid is not None:
            os.kill(self.broker.pid, signal.SIGCONT)
            self.paused = False
