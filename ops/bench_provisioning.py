"""Benchmark of provisioning latency: a subscription change committed in PostgreSQL -> the in-process
entitlement check answers with the new terms (figures printed, never asserted).

    python -m ops.bench_provisioning [--samples 100] [--interval-s 0.1]

On a private embedded stack (tansu + PostgreSQL): two published plans (growth: hard limit 1,000
API calls; scale: 5,000), 20 customers subscribed to growth, the outbox relay running in a thread
(`metergate.snapshot_relay.run_relay`, a round every `--interval-s` while idle) and an in-process
`Entitlements` following the topics.

1. Change: `provisioning.change_subscription` (upgrade or downgrade, immediately) -> the first
   check whose limit is the new plan's, polled every 0.5 ms: p50/p99/max.
2. Cancellation at a moment 0.5 s ahead -> the first check after that moment that denies access:
   the delay after the cancellation time (no one touches anything after the cancel call).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from metergate import provisioning
from metergate.db import subscription_store as store
from metergate.db.engine import make_engine
from metergate.domain.catalog import PlanVersion
from metergate.domain.records import Enforcement, FeatureEntitlement, FeatureKind, ResetPeriod
from metergate.domain.subscriptions import PriceOverrides, PublishedPlan, When
from metergate.embedded.stack import EmbeddedStack
from metergate.entitlements import Entitlements, EntitlementsSettings
from metergate.kafka.topics import Topics
from metergate.settings import DatabaseSettings, KafkaSettings
from metergate.snapshot_relay import run_relay


def offer(key: str, limit: int) -> PublishedPlan:
    calls = FeatureEntitlement(
        feature="api_calls",
        kind=FeatureKind.METERED,
        meter="api_calls",
        limit=Decimal(limit),
        enforcement=Enforcement.HARD,
    )
    return PublishedPlan(PlanVersion(key, 1, "USD", Decimal(100), ResetPeriod.MONTHLY, {"api_calls": calls}))


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return f"p50 {at(0.5):.1f}  p99 {at(0.99):.1f}  max {ordered[-1]:.1f} ms ({len(ordered)} samples)"


def wait(condition, timeout_s: float = 10.0) -> float:  # type: ignore[no-untyped-def]
    """Seconds until `condition()` holds, polled every 0.5 ms."""
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > timeout_s:
            raise SystemExit(f"not reflected within {timeout_s} s")
        time.sleep(0.0005)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--interval-s", type=float, default=0.1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-provisioning-"))
    kafka = KafkaSettings(topic_prefix="bench.")
    stack = EmbeddedStack(work, kafka=kafka, database=DatabaseSettings())
    stop = threading.Event()
    try:
        info = stack.start()
        kafka = KafkaSettings(bootstrap=info.kafka_bootstrap, topic_prefix="bench.")
        engine = make_engine(info.database_url, info.database_schema)
        now = lambda: datetime.now(UTC)  # noqa: E731
        with engine.begin() as conn:
            for plan in (offer("growth", 1000), offer("scale", 5000)):
                store.publish_plan_version(conn, plan, who="bench", now=now())
        customers = [f"customer-{i:02d}" for i in range(20)]
        for name in customers:
            provisioning.create_customer(engine, name, name=None, who="bench", now=now())
            provisioning.create_subscription(
                engine,
                subscription_id=name,
                customer_id=name,
                plan="growth",
                version=None,
                start=None,
                anchor=None,
                reset_period=None,
                add_ons={},
                variables={},
                overrides=PriceOverrides(),
                who="bench",
                now=now(),
            )
        relay = threading.Thread(
            target=run_relay,
            args=(engine, kafka.client_config(), Topics(kafka.topic_prefix)),
            kwargs={"clock": now, "stop": stop, "interval_s": args.interval_s},
            daemon=True,
        )
        relay.start()
        entitlements = Entitlements(EntitlementsSettings(kafka=kafka, checkpoint_path=None))
        if not entitlements.wait_caught_up(60):
            raise SystemExit("entitlements did not catch up in 60 s")
        for name in customers:
            wait(lambda name=name: entitlements.check(name, "api_calls", 1).limit == Decimal(1000), 30)

        on_plan = dict.fromkeys(customers, "growth")
        delays: list[float] = []
        for i in range(args.samples):
            name = customers[i % len(customers)]
            target = "scale" if on_plan[name] == "growth" else "growth"
            limit = Decimal(5000 if target == "scale" else 1000)
            started = time.perf_counter()
            provisioning.change_subscription(
                engine, name, provisioning.Change(plan=target), at=When.IMMEDIATELY, who="bench", now=now()
            )
            committed = time.perf_counter() - started
            reflected = wait(
                lambda name=name, limit=limit: entitlements.check(name, "api_calls", 1).limit == limit
            )
            delays.append((committed + reflected) * 1000)
            on_plan[name] = target
        print(f"change committed -> the check answers with the new plan, interval {args.interval_s} s:")
        print(f"  {percentiles(delays)}")

        lags: list[float] = []
        for name in customers:
            moment = now() + timedelta(milliseconds=500)
            provisioning.cancel_subscription(engine, name, at=moment, who="bench", now=now())
            wait(lambda name=name: not entitlements.check(name, "api_calls", 1).has_access)
            lags.append((now() - moment).total_seconds() * 1000)
        print("cancellation time -> the first check that denies access (nobody acts after the cancel call):")
        early = sum(1 for lag in lags if lag < 0)
        print(f"  {percentiles(lags)}; denied before the cancellation time: {early}")
        entitlements.close()
        engine.dispose()
    finally:
        stop.set()
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
