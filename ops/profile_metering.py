"""Where metering's time per event goes, stage by stage, with no broker (a real RocksDB, real codecs).

    .venv/bin/python -m ops.profile_metering [--events 200000] [--batch 20000]

The backlog is the benchmark's (ops/bench_metering.py: 10k customers, 3 meters, 2% duplicates), read
as one partition that holds every customer (nothing is forwarded). Each batch goes through the worker's
stages in the worker's order and each stage is timed on its own:

- decode: `read_event` of every value (fastavro + the quantity's Decimal);
- rules: `MeteringCore.meter_batch` (shape, dedup verdicts incl. the RocksDB multi-get, periods,
  folds, limit checks);
- encode: the records the commit order writes (usage.aggregates values, changelog totals, dedup
  groups), without sending them;
- rocksdb: the one WriteBatch per batch.

What is left to a worker on the real broker is producing/flushing those records and consuming:
`make bench` measures the whole; the difference between the two is the broker's share.
Prints microseconds per event per stage; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rocksdict import WriteBatch

from metergate.domain.catalog import parse_catalog
from metergate.domain.metering import Decoded, MeteringCore, MeteringRules
from metergate.wire.fastwire import read_event
from metergate_services.metering.commit import _published, encode_dedup_group
from metergate_services.metering.store import (
    AGGREGATE,
    StateStore,
    decode_seen,
    dedup_key,
    encode_seen,
    encode_total,
)
from ops.bench_metering import backlog
from ops.bench_metering import catalog as bench_catalog


@dataclass
class _Record:
    offset: int
    value: bytes
    key: bytes
    timestamp: int


class _Catalog:
    def __init__(self, customers: int) -> None:
        parsed = parse_catalog(bench_catalog(customers, 0))
        self.meters = dict(parsed.meters)
        snapshots = parsed.snapshots(version=1, updated_at=datetime.now(UTC))
        self.snapshots = {snapshot.customer_id: snapshot for snapshot in snapshots}

    def meter(self, name: str) -> Any:
        return self.meters.get(name)

    def snapshot(self, customer_id: str, at_ms: int) -> Any:
        return self.snapshots.get(customer_id)


class _State:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.cache: dict[str, Any] = {}

    def first_seen_many(self, ids: Any) -> list[Any]:
        found = self.store.seen_many([dedup_key(c, e) for c, e in ids])
        return [None if raw is None else decode_seen(raw) for raw in found]

    def total(self, key: str) -> Any:
        return self.cache.get(key) or self.store.aggregate(key)

    def sent_marks(self, partition: int, key: str) -> Any:
        return ()


def records(count: int, customers: int) -> list[_Record]:
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    return [
        _Record(offset, value, key, now_ms)
        for offset, (key, value) in enumerate(backlog(count, customers, now))
    ]


def profile(events: int, batch: int, customers: int = 10_000) -> dict[str, float]:
    consumed = records(events, customers)
    catalog = _Catalog(customers)
    spent = {"decode": 0.0, "rules": 0.0, "encode": 0.0, "rocksdb": 0.0}
    with tempfile.TemporaryDirectory() as directory:
        store = StateStore(Path(directory) / "state")
        state = _State(store)
        rules = MeteringRules(
            partitions=1,  # one partition holds every customer: nothing is forwarded
            dedup_window_ms=30 * 86_400_000,
            future_skew_ms=300_000,
            late_grace_ms=86_400_000,
            events_topic="usage.events",
        )
        core = MeteringCore(rules, catalog)
        for start in range(0, len(consumed), batch):
            chunk = consumed[start : start + batch]
            t0 = time.process_time()
            decoded: list[Decoded] = [(record, read_event(record.value)) for record in chunk]
            t1 = time.process_time()
            fx = core.meter_batch([(0, decoded)], state, int(time.time() * 1000))
            t2 = time.process_time()
            local = WriteBatch(raw_mode=True)
            for key, (_p, found) in fx.totals.items():
                found.total.version = found.total.applied_offset + 1
                _published(found, fx.now_ms)
                local.put(AGGREGATE + key.encode(), encode_total(found))
            for entries in fx.new_seen.values():
                encode_dedup_group(entries)
                for customer, event_id, seen in entries:
                    local.put(dedup_key(customer, event_id), encode_seen(seen))
            t3 = time.process_time()
            store.write(local)
            t4 = time.process_time()
            for key, (_p, found) in fx.totals.items():
                state.cache[key] = found
            spent["decode"] += t1 - t0
            spent["rules"] += t2 - t1
            spent["encode"] += t3 - t2
            spent["rocksdb"] += t4 - t3
        store.close()
    per_event = {stage: seconds / len(consumed) * 1e6 for stage, seconds in spent.items()}
    per_event["total"] = sum(per_event.values())
    return per_event


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=20_000)
    args = parser.parse_args()
    figures = profile(args.events, args.batch)
    print(f"metering stages, microseconds per event ({args.events:,} events, batches of {args.batch:,}):")
    for stage, micros in figures.items():
        print(f"  {stage:<8} {micros:6.2f} µs")
    print(f"  => at most {1e6 / figures['total']:,.0f} events/s per worker before the broker's share")


if __name__ == "__main__":
    main()
