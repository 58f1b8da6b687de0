"""Benchmark of the rating consumer: aggregate updates rated and committed to PostgreSQL per second.

    python -m ops.bench_rating [--updates 200000] [--customers 10000] [--batch-size 5000]

Uses METERGATE_KAFKA_BOOTSTRAP / METERGATE_DATABASE_URL when set, the embedded stack otherwise.
Produces entitlement snapshots (graduated, per-unit and package pricing; 5% of customers with
prepaid credit), then `--updates` running totals over customers x 3 meters (each key's versions in
order), and runs the consumer in this process until every update is committed. The rate is
measured from the first batch to the last commit (start-up, snapshot catch-up and the group join
are reported apart). Nothing asserts a time; `bench()` returns the figures for other benchmarks.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import text

METERS = ("api_calls", "tokens", "storage_gb")


@dataclass(frozen=True)
class BenchResult:
    updates: int  # aggregate updates consumed, rated and committed
    applied: int  # of which newer versions applied one by one (the rest collapsed into them)
    customers: int
    batch_size: int
    produce_s: float
    startup_s: float
    rating_s: float
    updates_per_s: float
    line_items: int
    ledger_entries: int
    timings: dict[str, float]
    invoice_mismatches: int = 0  # invoice_sync rows that differ from their lines (must be 0)
    billable: bool = False
    #: CPU microseconds per update between the first batch and the last commit: the consumer
    #: thread's, and the whole rating process's (less sensitive to other work on the machine than
    #: the rate; PostgreSQL's own CPU is not in it); 0 when not measured (several workers)
    consumer_cpu_us: float = 0.0
    process_cpu_us: float = 0.0
    #: CPU microseconds per update of this process's child processes over the same span, by
    #: program (the embedded stack's PostgreSQL and broker); empty with an external stack
    children_cpu_us: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"rating{' (billable)' if self.billable else ''}: {self.updates:,} aggregate updates over {self.customers:,} customers x {len(METERS)} meters, "
            f"batch {self.batch_size}: {self.updates_per_s:,.0f} updates/s rated and committed "
            f"({self.applied:,} applied one by one, the rest collapsed into a newer version of the same batch) "
            f"({self.rating_s:.1f} s; start-up {self.startup_s:.1f} s; produce {self.produce_s:.1f} s); "
            f"{self.line_items:,} line items, {self.ledger_entries:,} ledger entries, "
            f"{self.invoice_mismatches} invoice rows differing from their lines; "
            f"CPU per update: consumer thread {self.consumer_cpu_us:.1f} us, process {self.process_cpu_us:.1f} us"
            f"{''.join(f', {name} {us:.1f} us' for name, us in self.children_cpu_us.items())}\n"
            f"  time per step (s): {', '.join(f'{k} {v:.2f}' for k, v in self.timings.items())}"
        )


#: invoice_sync rows whose totals are not those of their (customer, period, currency) lines now
_INVOICE_MISMATCHES = """
    SELECT count(*) FROM invoice_sync AS s
    FULL JOIN (
        SELECT customer_id, period_start, currency, sum(amount) AS amount_total,
               sum(credits_applied) AS credits_applied, count(*) AS line_count
        FROM line_items WHERE status <> 'superseded' GROUP BY 1, 2, 3
    ) AS l USING (customer_id, period_start, currency)
    WHERE (s.amount_total, s.credits_applied, s.line_count)
          IS DISTINCT FROM (l.amount_total, l.credits_applied, l.line_count)
    """


def _snapshot(customer: str) -> Any:
    from metergate.domain.records import (
        EntitlementSnapshot,
        FeatureEntitlement,
        FeatureKind,
        PriceTier,
        Pricing,
        PricingModel,
    )

    return EntitlementSnapshot(
        customer_id=customer,
        subscription_id=f"sub-{customer}",
        plan_key="pro",
        plan_version=1,
        currency="USD",
        base_fee=Decimal("49"),
        features=(
            FeatureEntitlement(
                feature="api_calls",
                kind=FeatureKind.METERED,
                meter="api_calls",
                included=Decimal(1000),
                pricing=Pricing(
                    model=PricingModel.GRADUATED,
                    tiers=(
                        PriceTier(up_to=Decimal(10000), unit_price=Decimal("0.002")),
                        PriceTier(up_to=None, unit_price=Decimal("0.001")),
                    ),
                ),
            ),
            FeatureEntitlement(
                feature="tokens",
                kind=FeatureKind.METERED,
                meter="tokens",
                included=Decimal(100000),
                pricing=Pricing(model=PricingModel.PER_UNIT, unit_price=Decimal("0.000002")),
            ),
            FeatureEntitlement(
                feature="storage",
                kind=FeatureKind.METERED,
                meter="storage_gb",
                pricing=Pricing(model=PricingModel.PACKAGE, unit_price=Decimal(5), package_size=Decimal(100)),
            ),
        ),
        updated_at=datetime.now(UTC),
    )


def _aggregates(
    names: list[str], updates: int, period_start: datetime, period_end: datetime, billable: bool
) -> Iterator[Any]:
    """The benchmark's running totals: `updates` versions over customers x meters, in key order."""
    from metergate.domain.records import Aggregation, UsageAggregate

    keys = [(c, m) for c in names for m in METERS]
    # default: totals stay within the included units / first package, so amounts rarely change;
    # billable: every version is beyond them and moves every amount (and draws prepaid credit)
    step = (
        {"api_calls": 1_097, "tokens": 112_345, "storage_gb": 107}
        if billable
        else {"api_calls": 97, "tokens": 12_345, "storage_gb": 7}
    )
    for n in range(updates):
        customer, meter = keys[n % len(keys)]
        version = n // len(keys) + 1
        yield UsageAggregate(
            customer_id=customer,
            meter=meter,
            aggregation=Aggregation.SUM,
            period_start=period_start,
            period_end=period_end,
            value=Decimal(step[meter] * version),
            event_count=version,
            version=version,
            last_event_at=period_start + timedelta(seconds=version),
            last_event_id=f"e-{n}",
            updated_at=period_start + timedelta(seconds=version),
        )


def bench_fold(
    *, updates: int = 200_000, customers: int = 10_000, batch_size: int = 5000, billable: bool = False
) -> tuple[float, str]:
    """The fold alone over the benchmark's records, no broker, no database: (thread CPU
    microseconds per update in `rate_records`, a digest of every changed line and ledger entry).

    As the consumer meets them: snapshots decoded by the codec (fresh objects: every prepared
    table is built during the run), records decoded by `fastwire.read_aggregate`, batches of
    `batch_size` folded with the lines the previous ones left (the line cache), 5% of customers
    with a wallet holding their grant, `GcPolicy` installed. The digest compares two commits'
    results. Memos keyed by value (line keys, priced results) outlive a run: the first run of a
    process is the one to compare with the consumer's."""
    import gc
    import hashlib

    from metergate.domain.ledger import Grant, Wallet
    from metergate.domain.rating import Line, RatingFold, rate_records
    from metergate.domain.records import EntitlementSnapshot, UsageAggregate
    from metergate.domain.terms import DatedTerms
    from metergate.wire.codec import codec
    from metergate.wire.fastwire import read_aggregate
    from metergate_services.rating.collector import GcPolicy

    names = [f"cust-{i:06d}" for i in range(customers)]
    snapshots = codec(EntitlementSnapshot)
    terms = DatedTerms()
    for customer in names:
        terms.remember(snapshots.decode(snapshots.encode(_snapshot(customer))))
    encoder = codec(UsageAggregate)
    period_start = datetime(2026, 12, 1, tzinfo=UTC)
    records = [
        read_aggregate(encoder.encode(aggregate))
        for aggregate in _aggregates(names, updates, period_start, datetime(2027, 1, 1, tzinfo=UTC), billable)
    ]
    wallets: dict[tuple[str, str], Wallet] = {}
    for index, customer in enumerate(names[::20]):  # 5% with prepaid credit, as bench() grants it
        wallet = wallets[(customer, "USD")] = Wallet(customer, "USD")
        wallet.add_grant(Grant(f"g-{customer}", customer, "USD", Decimal(50 + index % 100), 1, period_start))
    lines: dict[str, dict[str, Line]] = {}
    credits: dict[str, dict[str, Decimal]] = {}
    digest = hashlib.sha256()
    policy = GcPolicy()
    cpu = 0.0
    try:
        policy.after_batch()
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            in_batch = {record.customer_id for record in batch}
            fold = RatingFold(
                lines={record.key: dict(lines.get(record.key, {})) for record in batch},
                wallets={key: wallet for key, wallet in wallets.items() if key[0] in in_batch},
                credits={key: dict(sources) for key, sources in credits.items()},
            )
            with_credit = {customer for customer, _ in fold.wallets}
            began = time.thread_time()
            rate_records(fold, [((i, i), record) for i, record in enumerate(batch)], terms, with_credit)
            cpu += time.thread_time() - began
            policy.after_batch()
            lines.update(fold.lines)
            credits = fold.credits
            for line_key in sorted(fold.changed):
                digest.update(repr(tuple(fold.changed[line_key])).encode())
            for entry in fold.entries:
                digest.update(repr(entry).encode())
    finally:
        policy.close()
        gc.collect()
    return cpu / len(records) * 1e6, digest.hexdigest()[:16]


def bench(
    kafka_bootstrap: str,
    database_url: str,
    *,
    updates: int = 200_000,
    customers: int = 10_000,
    batch_size: int = 5000,
    partitions: int = 4,
    workers: int = 1,
    billable: bool = False,
) -> BenchResult:
    from metergate.db.credit_store import grant_credit
    from metergate.db.engine import make_engine
    from metergate.db.migrate import upgrade
    from metergate.domain.ledger import Grant
    from metergate.domain.records import EntitlementSnapshot, UsageAggregate
    from metergate.kafka.admin import ensure_topics
    from metergate.kafka.producer import DeliveryTracker, flush, make_producer, produce
    from metergate.kafka.topics import Topics
    from metergate.settings import DatabaseSettings, KafkaSettings
    from metergate.wire.codec import codec
    from metergate_services.rating.collector import GcPolicy
    from metergate_services.rating.consumer import RatingConsumer
    from metergate_services.rating.settings import RatingSettings

    run_id = uuid.uuid4().hex[:8]
    topics = Topics(prefix=f"bench{run_id}.")
    schema = f"bench_{run_id}"
    config = {"bootstrap.servers": kafka_bootstrap}
    ensure_topics(config, topics, partitions)
    upgrade(database_url, schema)
    engine = make_engine(database_url, schema)
    names = [f"cust-{i:06d}" for i in range(customers)]
    with engine.begin() as conn:
        for index, customer in enumerate(names[::20]):  # 5% with prepaid credit
            grant_credit(
                conn,
                Grant(f"g-{customer}", customer, "USD", Decimal(50 + index % 100), 1, datetime.now(UTC)),
            )

    started = time.perf_counter()
    producer = make_producer(config)
    tracker = DeliveryTracker()
    snapshots = codec(EntitlementSnapshot)
    for customer in names:
        produce(producer, topics.snapshots, customer.encode(), snapshots.encode(_snapshot(customer)), tracker)
    encoder = codec(UsageAggregate)
    period_start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    period_end = (period_start + timedelta(days=32)).replace(day=1)
    for n, aggregate in enumerate(_aggregates(names, updates, period_start, period_end, billable)):
        produce(producer, topics.aggregates, aggregate.key.encode(), encoder.encode(aggregate), tracker)
        if n % 50_000 == 0:
            producer.poll(0)
    flush(producer, tracker, topic=[topics.snapshots, topics.aggregates], timeout_s=120)
    produce_s = time.perf_counter() - started

    if workers > 1:
        return _bench_processes(
            kafka_bootstrap,
            database_url,
            topics,
            schema,
            run_id,
            updates,
            customers,
            batch_size,
            workers,
            produce_s,
            engine,
            billable,
        )
    settings = RatingSettings(
        kafka=KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=topics.prefix),
        database=DatabaseSettings(url=database_url, METERGATE_DATABASE_SCHEMA=schema),  # type: ignore[call-arg, arg-type]
        batch_size=batch_size,
        group_id=f"bench-{run_id}",
        lag_interval_s=0,
        expiry_interval_s=0,
    )
    consumer = RatingConsumer(settings, gc_policy=GcPolicy())  # as main.run() does
    began = time.perf_counter()
    children: list[dict[str, float]] = []  # children's CPU after the first batch, after the last

    def until(c: RatingConsumer) -> bool:
        done = c.committed_records >= updates
        if (c.first_batch_at is not None and not children) or done:
            children.append(_children_cpu())
        return done

    with _gc_pauses(counting=lambda: consumer.first_batch_at is not None) as pauses:
        consumer.run(until=until)
    assert consumer.first_batch_at is not None and consumer.last_commit_at is not None
    rating_s = consumer.last_commit_at - consumer.first_batch_at
    assert consumer.first_batch_cpu is not None and consumer.last_commit_cpu is not None
    consumer_cpu_us, process_cpu_us = (
        (last - first) / consumer.committed_records * 1e6
        for first, last in zip(consumer.first_batch_cpu, consumer.last_commit_cpu, strict=True)
    )
    with engine.begin() as conn:
        line_items = conn.execute(text("SELECT count(*) FROM line_items")).scalar_one()
        entries = conn.execute(text("SELECT count(*) FROM credit_ledger")).scalar_one()
        mismatches = conn.execute(text(_INVOICE_MISMATCHES)).scalar_one()
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()
    from metergate.kafka.admin import delete_topics

    delete_topics(config, topics.all())
    return BenchResult(
        updates=consumer.committed_records,
        applied=consumer.committed_updates,
        customers=customers,
        batch_size=batch_size,
        produce_s=produce_s,
        startup_s=consumer.first_batch_at - began,
        rating_s=rating_s,
        updates_per_s=consumer.committed_records / rating_s if rating_s > 0 else 0.0,
        line_items=line_items,
        ledger_entries=entries,
        invoice_mismatches=mismatches,
        billable=billable,
        timings={**consumer.timings, "gc pauses (all steps, from the first batch)": pauses[0]},
        consumer_cpu_us=consumer_cpu_us,
        process_cpu_us=process_cpu_us,
        children_cpu_us={
            name: (children[-1][name] - children[0].get(name, 0.0)) / consumer.committed_records * 1e6
            for name in sorted(children[-1])
        },
    )


def _children_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of this process's descendants now, by program name (Linux's
    /proc; {} elsewhere). A process that exited in between is not counted: PostgreSQL's backends
    live as long as the consumer's connections, so the span's work is in them."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return {}
    parents: dict[int, tuple[int, str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / tick)
    mine = {os.getpid()}
    found = True
    while found:
        found = False
        for pid, (ppid, _, _) in parents.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                found = True
    totals: dict[str, float] = {}
    for pid in mine - {os.getpid()}:
        _, name, cpu = parents[pid]
        program = "postgres" if name.startswith("postgres") else name.split("-")[0]
        totals[program] = totals.get(program, 0.0) + cpu
    return totals


@contextmanager
def _gc_pauses(counting: Callable[[], bool] = lambda: True) -> Iterator[list[float]]:
    """Seconds the cyclic garbage collector held the process while `counting()` (they fall inside
    the steps' times)."""
    import gc

    total = [0.0]
    started = [0.0]

    def callback(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif counting():
            total[0] += time.perf_counter() - started[0]

    gc.callbacks.append(callback)
    try:
        yield total
    finally:
        gc.callbacks.remove(callback)


def _bench_processes(
    kafka_bootstrap: str,
    database_url: str,
    topics: Any,
    schema: str,
    run_id: str,
    updates: int,
    customers: int,
    batch_size: int,
    workers: int,
    produce_s: float,
    engine: Any,
    billable: bool,
) -> BenchResult:
    """`workers` rating processes in one consumer group; timed by the offsets they commit."""
    import sys

    from metergate.embedded.processes import ChildProcess

    env = {
        **os.environ,
        "METERGATE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "METERGATE_KAFKA_TOPIC_PREFIX": topics.prefix,
        "METERGATE_DATABASE_URL": database_url,
        "METERGATE_DATABASE_SCHEMA": schema,
        "METERGATE_RATING_GROUP_ID": f"bench-{run_id}",
        "METERGATE_RATING_BATCH_SIZE": str(batch_size),
        "METERGATE_RATING_LAG_INTERVAL_S": "0",
        "METERGATE_RATING_EXPIRY_INTERVAL_S": "0",
    }
    began = time.perf_counter()
    logs = Path(tempfile.mkdtemp(prefix="bench-rating-"))
    children = [
        ChildProcess(
            f"rating worker {n}",
            [sys.executable, "-m", "metergate_services.rating.main"],
            logs / f"rating-{n}.log",
            env=env,
        )
        for n in range(workers)
    ]
    for child in children:
        child.start()
    try:
        first_at: float | None = None
        first_done = 0
        while True:
            with engine.begin() as conn:
                done = conn.execute(
                    text("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE topic = :t"),
                    {"t": topics.aggregates},
                ).scalar_one()
            now = time.perf_counter()
            if first_at is None and done > 0:
                first_at, first_done = now, done
            if done >= updates:
                break
            if not all(child.running() for child in children):
                raise RuntimeError(f"a rating worker exited; logs in {logs}")
            time.sleep(0.02)
    finally:
        for child in children:
            child.signal(child.stop_signal)
        for child in children:
            if not child.stop(60):  # SIGTERM already sent: this waits, and kills one that hangs
                print(f"{child.name} did not stop on SIGTERM within 60 s")
    assert first_at is not None
    rating_s = now - first_at
    with engine.begin() as conn:
        line_items = conn.execute(text("SELECT count(*) FROM line_items")).scalar_one()
        entries = conn.execute(text("SELECT count(*) FROM credit_ledger")).scalar_one()
        mismatches = conn.execute(text(_INVOICE_MISMATCHES)).scalar_one()
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()
    from metergate.kafka.admin import delete_topics

    delete_topics({"bootstrap.servers": kafka_bootstrap}, topics.all())
    return BenchResult(
        updates=updates,
        applied=-1,
        customers=customers,
        batch_size=batch_size,
        produce_s=produce_s,
        startup_s=first_at - began,
        rating_s=rating_s,
        updates_per_s=(updates - int(first_done)) / rating_s if rating_s > 0 else 0.0,
        line_items=line_items,
        ledger_entries=entries,
        invoice_mismatches=mismatches,
        billable=billable,
        timings={"workers": float(workers)},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--billable", action="store_true", help="every version changes every amount (and draws credit)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="rating processes in one group (>1: subprocesses)"
    )
    parser.add_argument(
        "--fold-only",
        action="store_true",
        help="the fold alone over the same records (no broker, no database): CPU us per update",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.fold_only:
        for _ in range(args.runs):
            us, digest = bench_fold(
                updates=args.updates,
                customers=args.customers,
                batch_size=args.batch_size,
                billable=args.billable,
            )
            kind = " (billable)" if args.billable else ""
            print(f"fold{kind}: {args.updates:,} updates, {us:.2f} us CPU per update; results {digest}")
        return
    bootstrap = os.environ.get("METERGATE_KAFKA_BOOTSTRAP")
    url = os.environ.get("METERGATE_DATABASE_URL")
    stack = None
    if not (bootstrap and url):
        from metergate.embedded.stack import EmbeddedStack
        from metergate.settings import DatabaseSettings, KafkaSettings

        stack = EmbeddedStack(
            Path(tempfile.mkdtemp(prefix="metergate-bench-")),
            kafka=KafkaSettings(bootstrap=bootstrap, topic_prefix="unused-"),
            database=DatabaseSettings(url=url),  # type: ignore[arg-type]
            create_topics=False,
            migrate=False,
        )
        info = stack.start()
        bootstrap, url = info.kafka_bootstrap, info.database_url
    try:
        for _ in range(args.runs):
            print(
                bench(
                    bootstrap,
                    url,
                    updates=args.updates,
                    customers=args.customers,
                    batch_size=args.batch_size,
                    workers=args.workers,
                    billable=args.billable,
                ),
                flush=True,
            )
    finally:
        if stack is not None:
            stack.stop()


if __name__ == "__main__":
    main()
