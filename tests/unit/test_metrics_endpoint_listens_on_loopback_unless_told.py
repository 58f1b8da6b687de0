"""The Prometheus endpoint of every service listens where METERGATE_METRICS_HOST says: loopback by default."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from metergate import metrics
from metergate.settings import MetricsSettings

pytestmark = pytest.mark.unit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_default_host_is_loopback(monkeypatch):
    monkeypatch.delenv("METERGATE_METRICS_HOST", raising=False)
    assert MetricsSettings().host == "127.0.0.1"
    monkeypatch.setenv("METERGATE_METRICS_HOST", "0.0.0.0")
    assert MetricsSettings().host == "0.0.0.0"


def test_the_endpoint_answers_on_loopback(monkeypatch):
    monkeypatch.delenv("METERGATE_METRICS_HOST", raising=False)
    port = _free_port()
    metrics.serve(port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
    assert _listening_addresses(port) == {"127.0.0.1"}


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the IPv4 sockets listening on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == "0A":  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found
