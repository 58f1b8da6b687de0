"""`metergate run admin`: the admin HTTP API (on 127.0.0.1:8183 by default).

Wires the pieces in one place: settings from the environment, the PostgreSQL engine, the key
store (the keys `metergate keys create --scope admin` writes), the Starlette app on uvicorn, and,
unless `METERGATE_ADMIN_RELAY=false`, the catalog outbox relay on a thread, so a change made over
the API reaches `entitlements.snapshots` within a relay round (and a scheduled one when its moment
comes). SIGTERM/SIGINT stop the server (requests in flight finish), then the relay.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

import uvicorn

from metergate import metrics as metrics_endpoint
from metergate.db.engine import make_engine
from metergate.entitlements.keys import KeyStore
from metergate.kafka.topics import Topics
from metergate.snapshot_relay import run_relay
from metergate_services.admin.app import create_app
from metergate_services.admin.settings import AdminSettings
from metergate_services.http import Server

log = logging.getLogger("metergate.admin")


def _now() -> datetime:
    return datetime.now(UTC)


def run() -> None:
    settings = AdminSettings()
    metrics_endpoint.serve(settings.metrics.port)
    keys = KeyStore(settings.keys_file)
    if not any(k.revoked_at is None and "admin" in k.scopes for k in keys.list()):
        log.warning(
            "admin: no API key with the admin scope in %s: every request will get 401 or 403 "
            "(create one with `metergate keys create --name sales-ops --scope admin`)",
            settings.keys_file,
        )
    engine = make_engine(settings.database.sqlalchemy_url(), settings.database.schema_name)
    stop = threading.Event()
    relay: threading.Thread | None = None
    if settings.relay:
        relay = threading.Thread(
            target=run_relay,
            args=(engine, settings.kafka.client_config(), Topics(settings.kafka.topic_prefix)),
            kwargs={"clock": _now, "stop": stop, "interval_s": settings.relay_interval_s},
            name="snapshot-relay",
            daemon=True,
        )
        relay.start()
    try:
        config = uvicorn.Config(
            create_app(engine, keys, clock=_now),
            host=settings.http_host,
            port=settings.http_port,
            proxy_headers=False,
            lifespan="off",
            access_log=False,
            log_level="warning",
            server_header=False,
        )
        log.info("admin: http://%s:%d (relay %s)", settings.http_host, settings.http_port, settings.relay)
        Server(config).run()
    finally:
        stop.set()
        if relay is not None:
            relay.join(15)
        engine.dispose()
        log.info("admin: stopped")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run()
