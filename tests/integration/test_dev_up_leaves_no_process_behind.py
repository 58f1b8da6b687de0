"""`metergate dev up` starts a working stack; Ctrl-C, SIGTERM, even a SIGKILL of it, leave no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from metergate.kafka.topics import TOPIC_SPECS
from metergate.testing.processes import alive, descendants
from metergate.testing.waiting import wait_until

pytestmark = pytest.mark.integration


def _check_stack_works(settings: dict[str, str]) -> None:
    admin = AdminClient({"bootstrap.servers": settings["METERGATE_KAFKA_BOOTSTRAP"]})
    assert {spec.name for spec in TOPIC_SPECS} <= set(admin.list_topics(timeout=10).topics)
    url = settings["METERGATE_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT version_num FROM metergate.alembic_version").fetchone() is not None


def _start(tmp_path: Path) -> tuple[subprocess.Popen[str], dict[str, str], list[int]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERGATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-m", "metergate.cli.main", "dev", "up", "--data-dir", str(tmp_path / "stack")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops the stack" in line:
            break
    output = "".join(lines)
    assert "Ctrl-C stops the stack" in output, output
    settings = dict(re.findall(r"^\s+(METERGATE_\w+)=(\S+)$", output, re.M))
    pids = [int(pid) for pid in re.findall(r"pid (\d+)", output)]
    return process, settings, pids


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sigkill"])
def test_stack_stops_without_orphans(tmp_path, how):
    process, settings, pids = _start(tmp_path)
    try:
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        _check_stack_works(settings)  # topics exist, PostgreSQL is migrated
        assert (tmp_path / "stack" / "stack.env").read_text().count("export METERGATE_") == 4
        started = descendants([process.pid])
        assert set(pids) <= started and len(started) > 3  # postgres has its helper processes
    finally:
        sent = {"ctrl-c": signal.SIGINT, "sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL}[how]
        process.send_signal(sent)
        process.wait(timeout=60)
        assert process.stdout is not None
        process.stdout.close()
    wait_until(
        lambda: not any(alive(pid) for pid in started),
        "every process of the stack to end",
        timeout_s=20,
        details=lambda: f"still running: {sorted(pid for pid in started if alive(pid))}",
    )
    if how != "sigkill":
        assert process.returncode == 0
