"""`metergate run entitlements`: the entitlement sidecar (HTTP on 127.0.0.1:8182 by default).

Wires the pieces in one place: settings from the environment, the in-process `Entitlements`
(follows the topics, checkpoints to disk), the key store, the Starlette app on uvicorn (uvloop and
httptools, one process: the state and the pending usage live in it). SIGTERM/SIGINT stop the
server (requests in flight finish), then the state is checkpointed and the producer flushed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from metergate import metrics as metrics_endpoint
from metergate.entitlements import Entitlements, EntitlementsSettings
from metergate.entitlements.keys import KeyStore
from metergate_services.entitlements.app import create_app
from metergate_services.http import Server

log = logging.getLogger("metergate.entitlements")


class _OneWrite:
    """A transport that sends a response's head together with its body: uvicorn writes the head
    (status line and headers) and the body in two `write` calls, i.e. two send() system calls per
    answer, which were ~45% of the sidecar's time under load. A write that ends a head
    (`\\r\\n\\r\\n`) is held until the next write (the body, in the same turn of the event loop),
    the end of that turn (`call_soon`), or `close`, whichever comes first; nothing else changes."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            data = held + data
        if data.endswith(b"\r\n\r\n"):
            self._held = data
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, sending each answer in one write (`_OneWrite`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_OneWrite(transport, self.loop))  # type: ignore[arg-type]


def _loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return "asyncio"
    return "uvloop"


def run() -> None:
    settings = EntitlementsSettings()
    metrics_endpoint.serve(settings.metrics.port)
    keys = KeyStore(settings.keys_file)
    if settings.keys_file.exists() and settings.keys_file.stat().st_mode & 0o077:
        log.warning(
            "entitlements: %s is readable by others; `chmod 600 %s`", settings.keys_file, settings.keys_file
        )
    active = [k for k in keys.list() if k.revoked_at is None]
    if not active:
        log.warning(
            "entitlements: no API key in %s: every request will get 401 (create one with `metergate keys create`)",
            settings.keys_file,
        )
    entitlements = Entitlements(settings)
    # The state is many long-lived objects (a snapshot per customer); with CPython's default
    # thresholds full collections walk them all and show as 100+ ms request stalls. Collect young
    # objects less often, and freeze the state once it has caught up (as the metering worker does).
    gc.set_threshold(50_000, 50, 100)

    def freeze_when_caught_up() -> None:
        if entitlements.wait_caught_up(settings.catch_up_timeout_s or 60):
            gc.collect()
            gc.freeze()

    threading.Thread(target=freeze_when_caught_up, name="gc-freeze", daemon=True).start()
    try:
        config = uvicorn.Config(
            create_app(entitlements, keys),
            host=settings.http_host,
            port=settings.http_port,
            loop=_loop(),
            http=_Protocol,
            proxy_headers=False,  # loopback: no proxy in front whose X-Forwarded-* to trust
            lifespan="off",
            access_log=False,
            log_level="warning",
            backlog=4096,
            timeout_keep_alive=30,
            server_header=False,
            date_header=False,
        )
        log.info(
            "entitlements: http://%s:%d (topics %s*, %d keys)",
            settings.http_host,
            settings.http_port,
            settings.kafka.topic_prefix,
            len(active),
        )
        Server(config).run()
    finally:
        entitlements.close()
        log.info("entitlements: stopped; checkpoint written")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run()
