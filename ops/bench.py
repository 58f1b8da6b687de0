"""The metergate benchmark: every figure of the pipeline in one run, against the broker's ceiling.

    make bench                                  # or: .venv/bin/python -m ops.bench
    .venv/bin/python -m ops.bench --events 200000 --json bench-results.json

On one embedded stack (or METERGATE_KAFKA_BOOTSTRAP + METERGATE_DATABASE_URL), in this order:

1. the ceiling: the broker's raw produce and consume rate of N usage events (10,000 customers,
   3 meters, 2% duplicates), confluent-kafka, no decoding (ops/ceiling.py);
2. metering (ops/bench_metering.py): raw consume rates of the same backlog (confluent-kafka, Faust),
   the metering worker's events/s on it, event-to-limit-event latency p50/p99 under a paced live load,
   recovery time after SIGKILL, and two workers against one on the same backlog (scaling ratio);
3. rating (ops/bench_rating.py): aggregate updates/s rated and committed to PostgreSQL.

It prints the figures and their ratio to the ceiling. It is a benchmark, not a test: nothing
asserts a time. Figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from metergate.domain.records import UsageEvent
from metergate.wire.codec import codec


def usage_records(
    count: int, customers: int, meters: int = 3, duplicates: float = 0.02
) -> list[tuple[bytes, bytes]]:
    """`count` encoded usage events; a `duplicates` share are exact re-sends of earlier ones."""
    rng = random.Random(42)
    encode = codec(UsageEvent).encode
    now = datetime.now(UTC)
    records: list[tuple[bytes, bytes]] = []
    for index in range(count):
        if records and rng.random() < duplicates:
            records.append(records[rng.randrange(len(records))])
            continue
        customer = f"customer-{rng.randrange(customers):05d}"
        event = UsageEvent(
            event_id=f"e-{index}",
            customer_id=customer,
            meter=f"meter_{rng.randrange(meters)}",
            quantity=Decimal(rng.randint(1, 100)),
            timestamp=now - timedelta(seconds=rng.randrange(3600)),
        )
        records.append((customer.encode(), encode(event)))
    return records


def run(events: int, customers: int, live_events: int, live_rate: int, rating_updates: int) -> dict[str, Any]:
    from metergate.embedded.stack import EmbeddedStack
    from ops.bench_metering import run_bench
    from ops.bench_rating import bench as rating_bench
    from ops.ceiling import measure_ceiling

    figures: dict[str, Any] = {"events": events, "customers": customers, "cores": os.cpu_count()}
    with EmbeddedStack(Path(tempfile.mkdtemp(prefix="metergate-bench-")), create_topics=False) as stack:
        config = {"bootstrap.servers": stack.kafka_bootstrap}
        print(f"stack up in {stack.startup_s:.1f} s; generating {events:,} events ...", flush=True)
        records = usage_records(events, customers)
        ceiling = measure_ceiling(config, records, partitions=4)
        figures["ceiling"] = asdict(ceiling)
        print(
            f"ceiling: produce {ceiling.produce_per_s:,.0f}/s, consume {ceiling.consume_per_s:,.0f}/s",
            flush=True,
        )

        print("metering ...", flush=True)
        started = time.monotonic()
        figures["metering"] = run_bench(
            stack.kafka_bootstrap, events=events, live_events=live_events, live_rate=live_rate
        )
        figures["metering"]["wall_s"] = time.monotonic() - started

        print("rating ...", flush=True)
        rated = rating_bench(
            stack.kafka_bootstrap, stack.database_url, updates=rating_updates, customers=customers
        )
        figures["rating"] = {k: v for k, v in asdict(rated).items()}
    return figures


def summary(figures: dict[str, Any]) -> str:
    ceiling = figures["ceiling"]
    metering = figures["metering"]
    rating = figures["rating"]
    lines = [
        f"metergate benchmark: {figures['events']:,} events, {figures['customers']:,} customers, {figures['cores']} cores",
        f"  ceiling   broker raw produce            {ceiling['produce_per_s']:>12,.0f} events/s",
        f"  ceiling   broker raw consume            {ceiling['consume_per_s']:>12,.0f} events/s",
    ]
    rate = metering.get("metering_per_s")
    for key, value in metering.items():
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and key not in ("events", "partitions")
        ):
            lines.append(f"  metering  {key:34} {value:>12,}")
    if rate:
        lines.append(
            f"  metering  end-to-end {rate:,.0f} events/s = {rate / ceiling['consume_per_s']:.2f} x the broker's raw consume"
            + (
                f", {rate / metering['raw_consume_faust_per_record_per_s']:.2f} x Faust's raw consume"
                if metering.get("raw_consume_faust_per_record_per_s")
                else ""
            )
        )
    lines.append(
        f"  rating    aggregate updates rated      {rating['updates_per_s']:>12,.0f} updates/s"
        f"  ({rating['updates']:,} updates, batch {rating['batch_size']})"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--live-events", type=int, default=50_000, help="paced events for the limit latency")
    parser.add_argument("--live-rate", type=int, default=10_000, help="events/s of the paced load")
    parser.add_argument("--rating-updates", type=int, default=200_000)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    figures = run(args.events, args.customers, args.live_events, args.live_rate, args.rating_updates)
    print()
    print(summary(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
