"""Benchmark of provisioning over the admin API: a change sent over HTTP -> the in-process
entitlement check answers with the new terms (figures printed, never asserted).

    python -m ops.bench_admin [--samples 100] [--interval-s 0.1]

On a private embedded stack (tansu + PostgreSQL): the admin service as a child process
(`metergate_services.admin.main`, its relay a round every `--interval-s` while idle), two plans
published over the API (growth: hard limit 1,000 API calls; scale: 5,000), 20 customers subscribed
over the API, and an in-process `Entitlements` following the topics.

1. `POST /v1/subscriptions/{id}/changes` (upgrade or downgrade, immediately): the request's round
   trip (HTTP + one PostgreSQL transaction), and the time from sending it to the first check
   whose limit is the new plan's (polled every 0.5 ms): p50/p99/max.
2. `POST /v1/subscriptions/{id}/changes:preview` round trip (nothing written).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import httpx

from metergate.embedded.processes import ChildProcess, free_port
from metergate.embedded.stack import EmbeddedStack
from metergate.entitlements import Entitlements, EntitlementsSettings
from metergate.entitlements.keys import KeyStore
from metergate.settings import DatabaseSettings, KafkaSettings
from ops.bench_provisioning import percentiles, wait


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--interval-s", type=float, default=0.1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-admin-"))
    kafka = KafkaSettings(topic_prefix="bench.")
    stack = EmbeddedStack(work, kafka=kafka, database=DatabaseSettings())
    admin: ChildProcess | None = None
    try:
        info = stack.start()
        kafka = KafkaSettings(bootstrap=info.kafka_bootstrap, topic_prefix="bench.")
        port = free_port()
        keys_file = work / "keys.json"
        key = KeyStore(keys_file).create("bench", ["admin"])[1]
        admin = ChildProcess(
            "admin api",
            [sys.executable, "-m", "metergate_services.admin.main"],
            work / "admin.log",
            env={
                **os.environ,
                "METERGATE_DATABASE_URL": info.database_url,
                "METERGATE_DATABASE_SCHEMA": info.database_schema,
                "METERGATE_KAFKA_BOOTSTRAP": info.kafka_bootstrap,
                "METERGATE_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
                "METERGATE_ADMIN_HTTP_PORT": str(port),
                "METERGATE_ADMIN_KEYS_FILE": str(keys_file),
                "METERGATE_ADMIN_RELAY_INTERVAL_S": str(args.interval_s),
            },
        )
        admin.start()
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": key}, timeout=10)

        def up() -> bool:
            try:
                return http.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait(up, 30)
        http.post("/v1/features", json={"feature": "api_calls", "kind": "metered", "meter": "api_calls"})
        for plan, limit in (("growth", 1000), ("scale", 5000)):
            body = {"base_fee": "100", "features": {"api_calls": {"limit": limit, "enforcement": "hard"}}}
            http.post(f"/v1/plans/{plan}/versions", json=body).raise_for_status()
        customers = [f"customer-{i:02d}" for i in range(20)]
        for name in customers:
            http.post("/v1/customers", json={"customer_id": name}).raise_for_status()
            http.post("/v1/subscriptions", json={"customer_id": name, "plan": "growth"}).raise_for_status()
        entitlements = Entitlements(EntitlementsSettings(kafka=kafka, checkpoint_path=None))
        if not entitlements.wait_caught_up(60):
            raise SystemExit("entitlements did not catch up in 60 s")
        for name in customers:
            wait(lambda name=name: entitlements.check(name, "api_calls", 1).limit == Decimal(1000), 30)

        on_plan = dict.fromkeys(customers, "growth")
        round_trips: list[float] = []
        delays: list[float] = []
        for i in range(args.samples):
            name = customers[i % len(customers)]
            target = "scale" if on_plan[name] == "growth" else "growth"
            limit = Decimal(5000 if target == "scale" else 1000)
            started = time.perf_counter()
            http.post(f"/v1/subscriptions/{name}/changes", json={"plan": target}).raise_for_status()
            answered = time.perf_counter() - started
            reflected = wait(
                lambda name=name, limit=limit: entitlements.check(name, "api_calls", 1).limit == limit
            )
            round_trips.append(answered * 1000)
            delays.append((answered + reflected) * 1000)
            on_plan[name] = target
        previews: list[float] = []
        for i in range(args.samples):
            name = customers[i % len(customers)]
            target = "scale" if on_plan[name] == "growth" else "growth"
            started = time.perf_counter()
            http.post(f"/v1/subscriptions/{name}/changes:preview", json={"plan": target}).raise_for_status()
            previews.append((time.perf_counter() - started) * 1000)
        print(f"POST .../changes round trip (HTTP + one PostgreSQL transaction): {percentiles(round_trips)}")
        print(
            f"change sent over the API -> the check answers with the new plan, relay interval {args.interval_s} s:"
        )
        print(f"  {percentiles(delays)}")
        print(f"POST .../changes:preview round trip (nothing written): {percentiles(previews)}")
        entitlements.close()
        http.close()
    finally:
        if admin is not None:
            admin.stop(30)
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
