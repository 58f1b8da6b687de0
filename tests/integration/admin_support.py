"""The admin API as a child process (`python -m metergate_services.admin.main`) against a test's
PostgreSQL schema (and topics, when its relay runs), on a free port."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import httpx

from metergate.embedded.processes import ChildProcess, free_port
from metergate.entitlements.keys import KeyStore
from metergate.kafka.topics import Topics
from metergate.testing.waiting import wait_until
from tests.integration.entitlements_support import ROOT


class AdminApi:
    def __init__(
        self,
        database_url: str,
        schema: str,
        directory: Path,
        *,
        kafka_bootstrap: str | None = None,
        topics: Topics | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.keys_file = directory / "keys.json"
        self.log = directory / "admin.log"
        self.env = {
            **os.environ,
            "METERGATE_DATABASE_URL": database_url,
            "METERGATE_DATABASE_SCHEMA": schema,
            "METERGATE_ADMIN_HTTP_PORT": str(self.port),
            "METERGATE_ADMIN_KEYS_FILE": str(self.keys_file),
            "METERGATE_ADMIN_RELAY": "true" if kafka_bootstrap else "false",
        }
        if kafka_bootstrap is not None:
            self.env["METERGATE_KAFKA_BOOTSTRAP"] = kafka_bootstrap
            self.env["METERGATE_KAFKA_TOPIC_PREFIX"] = topics.prefix if topics else ""
        self.keys = KeyStore(self.keys_file)
        self.child: ChildProcess | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def key(self, name: str, *scopes: str) -> str:
        return self.keys.create(name, scopes)[1]

    def start(self) -> AdminApi:
        self.child = ChildProcess(
            "admin api",
            [sys.executable, "-m", "metergate_services.admin.main"],
            self.log,
            env=self.env,
            cwd=ROOT,
        )
        self.child.start()
        wait_until(
            self._ready, f"admin API ready on {self.port}", timeout_s=30, every_s=0.02, details=self.tail
        )
        return self

    def _ready(self) -> bool:
        assert self.child is not None
        assert self.child.process is not None
        if self.child.process.poll() is not None:
            raise AssertionError(f"admin API exited with {self.child.process.returncode}:\n{self.tail()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> int:
        child, self.child = self.child, None
        if child is None:
            return 0
        if not child.stop(30):
            raise AssertionError(f"admin API did not stop on SIGTERM within 30 s:\n{self.tail()}")
        return child.wait(0)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": key}, timeout=10)

    def __enter__(self) -> AdminApi:
        return self.start()

    def __exit__(self, *_exc: Any) -> None:
        code = self.stop()
        assert code == 0, f"admin API exited with {code}:\n{self.tail()}"
