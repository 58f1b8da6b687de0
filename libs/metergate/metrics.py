"""The Prometheus endpoint of a metergate process.

Each service declares its own metrics (prometheus_client, module level) and calls `serve(port)` (or
`serve(MetricsSettings())`) at start-up; port 0 means no endpoint. The endpoint listens on
`METERGATE_METRICS_HOST` (loopback by default, like every other metergate listener; set 0.0.0.0
for a Prometheus on another host or in a container network).
"""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

from metergate.settings import MetricsSettings

log = logging.getLogger(__name__)
_served: set[int] = set()


def serve(port: int | MetricsSettings, addr: str | None = None) -> None:
    """Expose /metrics on `port` (idempotent per port; 0 = off) at `addr` (default: the host setting)."""
    settings = port if isinstance(port, MetricsSettings) else MetricsSettings()
    number = settings.port if isinstance(port, MetricsSettings) else port
    host = addr or settings.host
    if number == 0 or number in _served:
        return
    start_http_server(number, addr=host)
    _served.add(number)
    log.info("metrics on http://%s:%d/metrics", host, number)
