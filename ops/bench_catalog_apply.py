"""Benchmark of `catalog apply` on a long file: parse, plan (the diff against PostgreSQL) and apply
of N subscriptions, then the apply of the same file renegotiated (every subscription changed),
each subscription in its own transaction (figures printed, never asserted).

    python -m ops.bench_catalog_apply [--subscriptions 300]

On a private embedded PostgreSQL (and broker, unused). For each phase: wall time, and this
process's CPU time (`time.process_time`: the parsing, the rules and the driver, not PostgreSQL's
own) per subscription, which is what compares across runs on a shared machine.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from metergate import provisioning
from metergate.db.engine import make_engine
from metergate.domain.catalog import parse_catalog
from metergate.embedded.stack import EmbeddedStack
from metergate.settings import DatabaseSettings, KafkaSettings


def document(count: int, base_fee: str | None) -> dict[str, Any]:
    overrides = {} if base_fee is None else {"overrides": {"base_fee": base_fee}}
    return {
        "meters": {"api_calls": {"aggregation": "SUM"}},
        "features": {"api_calls": {"kind": "metered"}, "sso": {"kind": "boolean"}},
        "plans": {
            "growth": {
                "base_fee": "1000.00",
                "features": {
                    "sso": True,
                    "api_calls": {
                        "included": 10_000_000,
                        "limit": 20_000_000,
                        "enforcement": "hard",
                        "pricing": {"model": "per_unit", "unit_price": "0.0002"},
                    },
                },
            }
        },
        "subscriptions": {
            f"customer-{n:05d}": {"plan": "growth", "anchor": "2026-01-01", **overrides} for n in range(count)
        },
    }


def measured(name: str, count: int, step: Callable[[], Any]) -> Any:
    wall, cpu = time.perf_counter(), time.process_time()
    result = step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{name:<34} {wall:7.2f} s wall  {cpu * 1000 / count:7.3f} ms CPU per subscription")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscriptions", type=int, default=300)
    args = parser.parse_args()
    count = args.subscriptions
    work = Path(tempfile.mkdtemp(prefix="bench-catalog-apply-"))
    stack = EmbeddedStack(work, kafka=KafkaSettings(topic_prefix="bench."), database=DatabaseSettings())
    try:
        info = stack.start()
        engine = make_engine(info.database_url, info.database_schema)
        try:
            now = datetime.now(UTC)
            first = measured("parse", count, lambda: parse_catalog(document(count, None)))
            measured(
                "plan (empty database)", count, lambda: provisioning.plan_catalog(engine, first, now=now)
            )
            done = measured(
                "apply: create",
                count,
                lambda: provisioning.apply_catalog(engine, first, who="bench", now=now),
            )
            assert sum(1 for item in done if item.subject.startswith("subscription of ")) == count
            later = datetime.now(UTC)
            second = parse_catalog(document(count, "900.00"))
            measured(
                "plan (every one repriced)",
                count,
                lambda: provisioning.plan_catalog(engine, second, now=later),
            )
            measured(
                "apply: change",
                count,
                lambda: provisioning.apply_catalog(engine, second, who="bench", now=later),
            )
            measured(
                "plan (nothing to do)", count, lambda: provisioning.plan_catalog(engine, second, now=later)
            )
        finally:
            engine.dispose()
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
