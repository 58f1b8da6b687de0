"""Benchmark of the entitlement check: in-process and the sidecar over loopback (figures printed, not asserted).

    python -m ops.bench_entitlements [--customers 10000] [--skip-http] [--skip-load] [--duration 10]

1. In-process: `Entitlements.check` over 10,000 customers (each with a snapshot of 4 features and a
   usage aggregate), random customer and feature per call, each call timed alone: p50/p99/p99.9.
2. Sidecar: a private embedded broker with the same 10,000 customers, `metergate run entitlements`
   as a subprocess, and two load generators from Debian (`apt-get install -y wrk hey`; installed
   with apt-get when missing and run as root, else the runs are skipped with a line saying so):
   - paced runs at 2,000 and 5,000 checks/s with hey (`-q`: a fixed rate per connection; the
     achieved rate is printed, lower when answers come late), one customer;
   - wrk with a Lua script that POSTs checks for random customers: saturation at 1, 10, 50 and
     200 connections, and batches of 100 checks (each decision counts); errors and timeouts
     (answers later than 2 s) as wrk reports them.
3. Freshness: an aggregate produced straight to Kafka -> the first check that reflects it; a usage
   event produced straight to Kafka -> metering -> usage.aggregates -> the first check that
   reflects it (p50/p99); usage reported through `POST /v1/events` -> whether the very next check
   counts it (how many of 50 did).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx

from metergate.domain.periods import period_for
from metergate.domain.records import (
    Enforcement,
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    ResetPeriod,
)
from metergate.embedded.processes import ChildProcess
from metergate.entitlements import Entitlements, EntitlementsSettings
from metergate.entitlements.keys import KeyStore
from metergate.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ("api_calls", "tokens", "sso", "retention_days")


def snapshot(customer: str, anchor: datetime) -> EntitlementSnapshot:
    return EntitlementSnapshot(
        customer_id=customer,
        subscription_id=f"{customer}-sub",
        plan_key="pro",
        plan_version=1,
        billing_anchor=anchor,
        reset_period=ResetPeriod.MONTHLY,
        updated_at=anchor,
        features=(
            FeatureEntitlement(
                feature="api_calls",
                kind=FeatureKind.METERED,
                meter="api_calls",
                limit=Decimal(1000),
                enforcement=Enforcement.HARD,
            ),
            FeatureEntitlement(
                feature="tokens",
                kind=FeatureKind.METERED,
                meter="tokens",
                limit=Decimal(10**6),
                enforcement=Enforcement.SOFT,
            ),
            FeatureEntitlement(feature="sso", kind=FeatureKind.BOOLEAN),
            FeatureEntitlement(feature="retention_days", kind=FeatureKind.CONFIG, config_value="90"),
        ),
    )


def percentiles(samples: list[float]) -> str:
    samples = sorted(samples)

    def at(q: float) -> float:
        return samples[min(len(samples) - 1, int(q * len(samples)))]

    return f"p50 {at(0.5):.2f}  p99 {at(0.99):.2f}  p99.9 {at(0.999):.2f}  max {samples[-1]:.2f}"


# -- 1. in-process ---------------------------------------------------------------------------------
def bench_in_process(customers: int, calls: int = 200_000) -> None:
    from metergate.domain.records import Aggregation, UsageAggregate

    settings = EntitlementsSettings(kafka=KafkaSettings(bootstrap="127.0.0.1:9"), checkpoint_path=None)
    entitlements = Entitlements(settings, start=False)
    now = datetime.now(UTC)
    anchor = now - timedelta(days=3)
    period = period_for(now, anchor, ResetPeriod.MONTHLY)
    names = [f"customer-{i:05d}" for i in range(customers)]
    for index, name in enumerate(names):
        entitlements.state.apply_snapshot(name, snapshot(name, anchor), None)
        entitlements.state.apply_aggregate(
            UsageAggregate(
                customer_id=name,
                meter="api_calls",
                aggregation=Aggregation.SUM,
                period_start=period.start,
                period_end=period.end,
                value=Decimal(index % 1200),
                event_count=1,
                version=index + 1,
                last_event_at=now,
                last_event_id="e",
                updated_at=now,
            )
        )
    entitlements.follower.caught_up.set()
    entitlements.follower.last_contact = entitlements.follower.as_of = time.time() + 3600  # fresh for the run
    rng = random.Random(7)
    plan = [(rng.choice(names), rng.choice(FEATURES)) for _ in range(calls)]
    check = entitlements.check
    clock = time.perf_counter_ns
    for customer, feature in plan[:10_000]:  # warm-up
        check(customer, feature)
    # the state is long-lived: keep the cyclic GC from re-scanning it (what the metering worker does too)
    gc.collect()
    gc.freeze()
    samples = []
    started = time.perf_counter()
    for customer, feature in plan:
        t0 = clock()
        check(customer, feature, 1)
        samples.append((clock() - t0) / 1000)
    elapsed = time.perf_counter() - started
    print(
        f"in-process check, {customers} customers, {calls} calls: {calls / elapsed:,.0f} checks/s (one thread)"
    )
    print(f"  latency µs: {percentiles(samples)}")
    metered = [s for s, (_, f) in zip(samples, plan, strict=True) if f == "api_calls"]
    print(f"  metered (hard limit) only, µs: {percentiles(metered)}")


# -- 2. sidecar ------------------------------------------------------------------------------------
def find_tool(name: str) -> str | None:
    """A Debian load generator (`wrk`, `hey`): found on PATH, else installed with apt-get when this
    runs as root (as on the project's machines), else None (the caller says what it skips)."""
    found = shutil.which(name)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    print(f"{name} not found: apt-get install -y {name}", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", name], check=False, capture_output=True)
    if not shutil.which(name):
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", name], check=False, capture_output=True)
    return shutil.which(name)


LUA = """
local customers = {customers}
local features = {{"api_calls", "tokens", "sso", "retention_days"}}
local pause = {delay}
local batch = {batch}
math.randomseed(os.time() + math.floor(os.clock() * 1000000))
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "{key}"
local function one()
  return string.format('{{"customer_id":"customer-%05d","feature":"%s","requested_units":1}}',
    math.random(0, customers - 1), features[math.random(1, 4)])
end
request = function()
  if batch > 0 then
    local items = {{}}
    for i = 1, batch do items[i] = one() end
    return wrk.format(nil, "/v1/entitlements/check:batch", nil, '{{"checks":[' .. table.concat(items, ",") .. ']}}')
  end
  return wrk.format(nil, "/v1/entitlements/check", nil, one())
end
if pause > 0 then
  delay = function() return pause end
end
"""


def wrk(
    binary: str, url: str, script: Path, connections: int, duration_s: int, threads: int = 2
) -> dict[str, str]:
    result = subprocess.run(
        [
            binary,
            "-t",
            str(min(threads, connections)),
            "-c",
            str(connections),
            "-d",
            f"{duration_s}s",
            "--latency",
            "--timeout",
            "2s",
            "-s",
            str(script),
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    out = result.stdout
    figures = {"rate": re.search(r"Requests/sec:\s+(\S+)", out).group(1)}  # type: ignore[union-attr]
    for q in ("50", "99"):
        match = re.search(rf"^\s+{q}(?:\.000)?%\s+(\S+)", out, re.M)
        figures[f"p{q}"] = match.group(1) if match else "?"
    errors = re.search(r"Socket errors: (.*)", out)
    figures["errors"] = errors.group(1) if errors else "none"
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["non2xx"] = non2xx.group(1) if non2xx else "0"
    return figures


def hey(
    binary: str, url: str, key: str, connections: int, per_connection: int, duration_s: int
) -> dict[str, str]:
    """A fixed rate (hey's -q: each connection sends at most `per_connection` requests a second)."""
    body = '{"customer_id":"customer-00042","feature":"api_calls","requested_units":1}'
    result = subprocess.run(
        [
            binary,
            "-z",
            f"{duration_s}s",
            "-c",
            str(connections),
            "-q",
            str(per_connection),
            "-t",
            "2",
            "-m",
            "POST",
            "-T",
            "application/json",
            "-H",
            f"X-API-Key: {key}",
            "-d",
            body,
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    out = result.stdout
    rate = re.search(r"Requests/sec:\s+(\S+)", out)
    figures = {"rate": rate.group(1) if rate else "?"}
    for q in ("50", "99"):
        match = re.search(rf"^\s+{q}%+ in (\S+) secs", out, re.M)
        figures[f"p{q}"] = f"{float(match.group(1)) * 1000:.2f}ms" if match else "?"
    statuses = re.findall(r"\[(\d+)\]\s+(\d+) responses", out)
    figures["statuses"] = ", ".join(f"{code}: {n}" for code, n in statuses) or "none"
    errors = re.search(r"Error distribution:\n((?:\s+\[.*\n?)+)", out)
    figures["errors"] = " ".join(errors.group(1).split()) if errors else "none"
    return figures


def bench_sidecar(customers: int, duration_s: int, load: bool = True) -> None:
    from metergate.embedded.broker import EmbeddedBroker
    from metergate.kafka.admin import ensure_topics
    from metergate.kafka.producer import DeliveryTracker, flush, make_producer, produce
    from metergate.kafka.topics import Topics
    from metergate.wire.codec import codec

    binary = find_tool("wrk")
    if binary is None:
        print("\nsidecar benchmark skipped: wrk not found (Debian: apt-get install -y wrk)")
        return
    pacer = find_tool("hey")
    work = Path(tempfile.mkdtemp(prefix="bench-entitlements-"))
    broker = EmbeddedBroker(work)
    broker.start()
    sidecar = None
    try:
        config = {"bootstrap.servers": broker.bootstrap}
        topics = Topics("bench.")
        ensure_topics(config, topics, 4)
        now = datetime.now(UTC)
        anchor = now - timedelta(days=3)
        producer, tracker = make_producer(config), DeliveryTracker()
        encode = codec(EntitlementSnapshot).encode
        for i in range(customers):
            name = f"customer-{i:05d}"
            produce(producer, topics.snapshots, name.encode(), encode(snapshot(name, anchor)), tracker)
        flush(producer, tracker, topic=topics.snapshots, timeout_s=60)
        keys = KeyStore(work / "keys.json")
        key = keys.create("bench", ["admin"])[1]
        port = 18182
        env = {
            **os.environ,
            "METERGATE_KAFKA_BOOTSTRAP": broker.bootstrap,
            "METERGATE_KAFKA_TOPIC_PREFIX": topics.prefix,
            "METERGATE_ENTITLEMENTS_HTTP_PORT": str(port),
            "METERGATE_ENTITLEMENTS_KEYS_FILE": str(work / "keys.json"),
            "METERGATE_ENTITLEMENTS_CHECKPOINT_PATH": str(work / "checkpoint.json"),
        }
        sidecar = ChildProcess(
            "entitlements sidecar",
            [sys.executable, "-m", "metergate_services.entitlements.main"],
            work / "sidecar.log",
            env=env,
            cwd=ROOT,
        )
        sidecar.start()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("sidecar not ready in 60 s")

        def script(delay_ms: int = 0, batch: int = 0) -> Path:
            path = work / f"check-{delay_ms}-{batch}.lua"
            path.write_text(LUA.format(customers=customers, delay=delay_ms, batch=batch, key=key))
            return path

        if load:
            print(
                f"\nsidecar over loopback ({customers} customers; wrk {duration_s} s per run, 2 threads, timeout 2 s)"
            )
            if pacer is None:
                print("  paced runs skipped: hey not found (Debian: apt-get install -y hey)")
            for target, connections in ((2000, 20), (5000, 50)):
                if pacer is None:
                    break
                f = hey(
                    pacer, f"{url}/v1/entitlements/check", key, connections, target // connections, duration_s
                )
                print(
                    f"  paced {target}/s (hey, {connections} conns x {target // connections}/s, one customer): {f['rate']}/s  p50 {f['p50']}  p99 {f['p99']}  statuses {f['statuses']}  errors {f['errors']}"
                )
            for connections in (1, 10, 50, 200):
                f = wrk(binary, url, script(), connections, duration_s)
                print(
                    f"  saturation, {connections:>3} conns: {f['rate']}/s  p50 {f['p50']}  p99 {f['p99']}  errors {f['errors']}  non-2xx {f['non2xx']}"
                )
            f = wrk(binary, url, script(batch=100), 10, duration_s)
            decisions = float(f["rate"]) * 100
            print(
                f"  batches of 100, 10 conns: {f['rate']} requests/s = {decisions:,.0f} decisions/s  p50 {f['p50']}  p99 {f['p99']}  errors {f['errors']}"
            )

        # 3. freshness
        from metergate.domain.records import Aggregation, UsageAggregate, aggregate_key

        period = period_for(now, anchor, ResetPeriod.MONTHLY)
        agg_codec = codec(UsageAggregate)
        http = httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=5)
        delays = []
        for i in range(100):
            name = f"customer-{i:05d}"
            value = Decimal(500 + i)
            record = UsageAggregate(
                customer_id=name,
                meter="api_calls",
                aggregation=Aggregation.SUM,
                period_start=period.start,
                period_end=period.end,
                value=value,
                event_count=1,
                version=10_000 + i,
                last_event_at=now,
                last_event_id="e",
                updated_at=now,
            )
            produced = time.perf_counter()
            produce(
                producer,
                topics.aggregates,
                aggregate_key(name, "api_calls", period.start).encode(),
                agg_codec.encode(record),
                tracker,
            )
            flush(producer, tracker, topic=topics.aggregates, timeout_s=10)
            while True:
                body = http.post(
                    "/v1/entitlements/check",
                    json={"customer_id": name, "feature": "api_calls", "requested_units": 0},
                ).json()
                if body["usage"] == f"{value}":
                    break
            delays.append((time.perf_counter() - produced) * 1000)
        print(
            f"\nfreshness, aggregate produced to Kafka -> check reflects it (100 samples, ms): {percentiles(delays)}"
        )
        next_check = 0
        for i in range(50):
            name = f"customer-{100 + i:05d}"  # customers without a synthetic aggregate (whose versions would cover any offset)
            before = Decimal(
                http.post(
                    "/v1/entitlements/check",
                    json={"customer_id": name, "feature": "api_calls", "requested_units": 0},
                ).json()["usage"]
            )
            reply = http.post(
                "/v1/events",
                json={
                    "event_id": f"bench-{i}-{time.time_ns()}",
                    "customer_id": name,
                    "meter": "api_calls",
                    "quantity": 3,
                },
            )
            assert reply.json()["accepted"] == 1, reply.text
            after = Decimal(
                http.post(
                    "/v1/entitlements/check",
                    json={"customer_id": name, "feature": "api_calls", "requested_units": 0},
                ).json()["usage"]
            )
            next_check += after == before + 3
        print(f"freshness, POST /v1/events -> the next check: {next_check}/50 reflected it at once")
        bench_metering_freshness(work, broker.bootstrap, topics, producer, tracker, http)
        http.close()
    finally:
        if sidecar is not None:
            sidecar.stop(30)
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def bench_metering_freshness(
    work: Path, bootstrap: str, topics, producer, tracker, http: httpx.Client
) -> None:  # type: ignore[no-untyped-def]
    """A usage event produced straight to Kafka -> metering -> usage.aggregates -> a check reflects it."""
    from metergate.domain.records import Aggregation, MeterDefinition, UsageEvent, now_utc
    from metergate.kafka.producer import flush, produce
    from metergate.wire.codec import codec

    produce(
        producer,
        topics.meters,
        b"api_calls",
        codec(MeterDefinition).encode(MeterDefinition(meter="api_calls", aggregation=Aggregation.SUM)),
        tracker,
    )
    flush(producer, tracker, topic=topics.meters, timeout_s=10)
    env = {
        **os.environ,
        "METERGATE_KAFKA_BOOTSTRAP": bootstrap,
        "METERGATE_KAFKA_TOPIC_PREFIX": topics.prefix,
        "METERGATE_METERING_DATA_DIR": str(work / "metering"),
        "METERGATE_LOG_LEVEL": "WARNING",
    }
    worker = ChildProcess(
        "metering worker",
        [sys.executable, "-m", "metergate_services.metering.main"],
        work / "metering.log",
        env=env,
        cwd=ROOT,
    )
    worker.start()
    encode = codec(UsageEvent).encode
    delays = []
    try:

        def usage(name: str) -> Decimal:
            body = http.post(
                "/v1/entitlements/check",
                json={"customer_id": name, "feature": "api_calls", "requested_units": 0},
            ).json()
            return Decimal(body["usage"])

        # first event: waits for the worker to join its group and recover (not counted)
        for i in range(61):
            name = f"customer-{200 + i:05d}"
            before = usage(name)
            event = UsageEvent(
                event_id=f"fresh-{i}-{time.time_ns()}",
                customer_id=name,
                meter="api_calls",
                quantity=Decimal(2),
                timestamp=now_utc(),
            )
            produced = time.perf_counter()
            produce(producer, topics.events, name.encode(), encode(event), tracker)
            flush(producer, tracker, topic=topics.events, timeout_s=10)
            deadline = produced + (120 if i == 0 else 10)
            while usage(name) != before + 2:
                if time.perf_counter() > deadline:
                    raise SystemExit(f"event {i} not reflected in time; see {work / 'metering.log'}")
                time.sleep(0.002)
            if i:
                delays.append((time.perf_counter() - produced) * 1000)
        print(
            f"freshness, usage event produced to Kafka -> metering -> check reflects it (60 samples, ms): {percentiles(delays)}"
        )
    finally:
        worker.stop(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-load", action="store_true", help="sidecar: freshness only, no load runs")
    args = parser.parse_args()
    print(json.dumps({"python": sys.version.split()[0], "cpus": os.cpu_count(), "load": os.getloadavg()}))
    bench_in_process(args.customers)
    if not args.skip_http:
        bench_sidecar(args.customers, args.duration, load=not args.skip_load)


if __name__ == "__main__":
    main()
