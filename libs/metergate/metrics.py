"""The Prometheus endpoint of a metergate process.

Each service declares its own metrics (prometheus_client, module level) and calls `serve(port)` at
start-up; port 0 means no endpoint.
"""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger(__name__)
_served: set[int] = set()


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Expose /metrics on `port` (idempotent per port; 0 = off)."""
    if port == 0 or port in _served:
        return
    start_http_server(port, addr=addr)
    _served.add(port)
    log.info("metrics on http://%s:%d/metrics", addr, port)
