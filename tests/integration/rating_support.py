"""Helpers of the rating integration tests: snapshots and aggregates in, consumer runs, tables out."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from sqlalchemy import text

from metergate.db import rating_store
from metergate.db.credit_store import grant_credit
from metergate.db.engine import make_engine
from metergate.db.migrate import upgrade
from metergate.domain.ledger import Grant
from metergate.domain.records import (
    Aggregation,
    DeadLetter,
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    LimitEvent,
    PriceTier,
    Pricing,
    PricingModel,
    UsageAggregate,
)
from metergate.embedded.processes import ChildProcess
from metergate.kafka.topics import Topics
from metergate.settings import DatabaseSettings, KafkaSettings
from metergate.testing.topics import read_topic
from metergate.wire.codec import codec
from metergate_services.rating.consumer import RatingConsumer
from metergate_services.rating.settings import RatingSettings

ROOT = Path(__file__).resolve().parents[2]
MARCH = datetime(2026, 3, 1, tzinfo=UTC)
APRIL = datetime(2026, 4, 1, tzinfo=UTC)
MAY = datetime(2026, 5, 1, tzinfo=UTC)
GROUP = "rating-test"
#: rating's clock in these tests: inside March 2026, the period of the usage they feed, so the base
#: fees the snapshots call for are March's whatever the date (`RatingSettings.clock_start`)
CLOCK_START = MARCH + timedelta(days=14)
#: the same for a rating process started with its own environment
CLOCK_ENV = {"METERGATE_RATING_CLOCK_START": CLOCK_START.isoformat()}


def metered(
    feature: str, pricing: Pricing, included: str = "0", meter: str | None = None
) -> FeatureEntitlement:
    return FeatureEntitlement(
        feature=feature,
        kind=FeatureKind.METERED,
        meter=meter or feature,
        included=D(included),
        pricing=pricing,
    )


PER_UNIT = Pricing(model=PricingModel.PER_UNIT, unit_price=D("0.002"))
PACKAGE = Pricing(model=PricingModel.PACKAGE, unit_price=D("15"), package_size=D("100"))
TIERS = (
    PriceTier(up_to=D("1000"), unit_price=D("0.10")),
    PriceTier(up_to=D("5000"), unit_price=D("0.08"), flat_fee=D("5")),
    PriceTier(up_to=None, unit_price=D("0.05")),
)
GRADUATED = Pricing(model=PricingModel.GRADUATED, tiers=TIERS)
VOLUME = Pricing(model=PricingModel.VOLUME, tiers=TIERS)


def snapshot(
    customer: str,
    features: Iterable[FeatureEntitlement] = (),
    *,
    base_fee: str = "0",
    currency: str = "USD",
    subscription: str | None = "auto",
    version: int = 1,
) -> EntitlementSnapshot:
    return EntitlementSnapshot(
        customer_id=customer,
        subscription_id=f"sub-{customer}" if subscription == "auto" else subscription,
        plan_key="pro",
        plan_version=3,
        currency=currency,
        base_fee=D(base_fee),
        features=tuple(features),
        version=version,
        updated_at=MARCH,
    )


def aggregate(
    customer: str, meter: str, value: str | D, version: int, period_start: datetime = MARCH, **kw: Any
) -> UsageAggregate:
    period_end = APRIL if period_start == MARCH else MAY
    return UsageAggregate(
        customer_id=customer,
        meter=meter,
        aggregation=Aggregation.SUM,
        period_start=period_start,
        period_end=period_end,
        value=D(value),
        event_count=version,
        version=version,
        last_event_at=period_start + timedelta(minutes=version),
        last_event_id=f"{customer}-{meter}-{version}",
        subscription_id=kw.pop("subscription_id", f"sub-{customer}"),
        updated_at=period_start + timedelta(minutes=version),
        **kw,
    )


class Feed:
    """Produces snapshots and aggregates (or raw bytes) and remembers each topic's end offsets."""

    def __init__(self, kafka_config: Mapping[str, Any], topics: Topics) -> None:
        self.topics = topics
        self.producer = Producer({**kafka_config, "enable.idempotence": True, "linger.ms": 5})
        self.ends: dict[str, dict[int, int]] = {}
        self.sent = 0
        self._snapshots = codec(EntitlementSnapshot)
        self._aggregates = codec(UsageAggregate)

    def _delivered(self, err: Any, msg: Any) -> None:
        assert err is None, err
        ends = self.ends.setdefault(msg.topic(), {})
        ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    def raw(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=self._delivered)
                self.sent += topic == self.topics.aggregates
                return
            except BufferError:
                self.producer.poll(0.05)

    def snapshot(self, snap: EntitlementSnapshot) -> None:
        self.raw(self.topics.snapshots, snap.customer_id.encode(), self._snapshots.encode(snap))

    def aggregate(self, agg: UsageAggregate) -> None:
        self.raw(self.topics.aggregates, agg.key.encode(), self._aggregates.encode(agg))

    def flush(self) -> Feed:
        assert self.producer.flush(60) == 0
        return self

    @property
    def aggregate_ends(self) -> dict[int, int]:
        return dict(self.ends.get(self.topics.aggregates, {}))


def settings(
    kafka_bootstrap: str, topics: Topics, database_url: str, schema: str, **overrides: Any
) -> RatingSettings:
    values: dict[str, Any] = {
        "group_id": GROUP,
        "batch_size": 500,
        "poll_timeout_s": 0.2,
        "snapshot_idle_s": 0.3,
        "retry_initial_s": 0.1,
        "retry_max_s": 1.0,
        "lag_interval_s": 0,
        "expiry_interval_s": 0,
        "session_timeout_s": 3.0,
        "clock_start": CLOCK_START,
    }
    values.update(overrides)
    return RatingSettings(
        kafka=KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=topics.prefix),
        database=DatabaseSettings(url=database_url, METERGATE_DATABASE_SCHEMA=schema),  # type: ignore[call-arg, arg-type]
        **values,
    )


def caught_up(ends: Mapping[int, int]) -> Callable[[RatingConsumer], bool]:
    """`until` for RatingConsumer.run: every partition committed up to `ends`."""

    def done(consumer: RatingConsumer) -> bool:
        return all((consumer.expected.get(p) or 0) >= end for p, end in ends.items())

    return done


def run_consumer(
    rating: RatingSettings,
    ends: Mapping[int, int],
    timeout_s: float = 90.0,
    clock: Callable[[], datetime] | None = None,
) -> RatingConsumer:
    """Run a consumer in this process until it committed everything up to `ends`."""
    consumer = RatingConsumer(rating, clock=clock)
    deadline = time.monotonic() + timeout_s
    done = caught_up(ends)
    topic = rating.kafka.topics.aggregates

    def committed() -> int:
        engine = make_engine(rating.database.sqlalchemy_url(), rating.database.schema_name)
        try:
            with engine.connect() as conn:
                return sum(rating_store.stored_offsets(conn, rating.group_id, topic, list(ends)).values())
        finally:
            engine.dispose()

    before = committed()

    def until(c: RatingConsumer) -> bool:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"rating not caught up after {timeout_s} s: at {c.expected}, want {dict(ends)}"
            )
        return done(c)

    consumer.run(until=until)
    assert_accounted(consumer.accounting, committed() - before)
    return consumer


@contextmanager
def running_consumer(
    rating: RatingSettings, clock: Callable[[], datetime] | None = None
) -> Iterator[RatingConsumer]:
    """A consumer running in a thread of this process until the block ends (then stopped, joined,
    and whatever it raised raised here)."""
    consumer = RatingConsumer(rating, clock=clock)
    failures: list[BaseException] = []

    def work() -> None:
        try:
            consumer.run()
        except BaseException as exc:  # handed to the test below
            failures.append(exc)

    thread = threading.Thread(target=work, name="rating", daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        consumer.stop()
        thread.join(60)
    assert not thread.is_alive(), "rating did not stop within 60 s"
    if failures:
        raise failures[0]


class Clock:
    """A clock a test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def assert_accounted(counts: Mapping[str, int], consumed: int) -> None:
    """The accounting invariant of one rating run: it consumed `consumed` records (counted
    independently, e.g. from the stored offsets), each under exactly one outcome."""
    assert counts["consumed"] == consumed, (counts, consumed)
    outcomes = counts["accepted"] + counts["duplicate"] + counts["rejected"] + counts["tombstone"]
    assert counts["consumed"] == outcomes, counts


@contextmanager
def another_schema(database_url: str) -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    upgrade(database_url, schema)
    try:
        yield schema
    finally:
        engine = make_engine(database_url, "public")
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def query(database_url: str, schema: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = make_engine(database_url, schema)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def stored_offsets(database_url: str, schema: str, topic: str) -> dict[int, int]:
    rows = query(
        database_url,
        schema,
        "SELECT partition, next_offset FROM consumer_offsets WHERE consumer_group = :g AND topic = :t",
        g=GROUP,
        t=topic,
    )
    return {int(p): int(o) for p, o in rows}


def state(database_url: str, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything rating wrote, without the columns that record wall-clock time or write counts."""
    return {
        "line_items": query(
            database_url,
            schema,
            "SELECT line_key, aggregate_key, customer_id, subscription_id, plan_key, plan_version, feature, meter,"
            " charge, status, unpriced_reason, period_start, period_end, currency, quantity, included_quantity,"
            " billable_quantity, pricing_model, unit_price, amount, credits_applied, amount_due, credit_sources,"
            " detail, aggregate_version, snapshot_version, event_count, last_event_id, last_event_at"
            " FROM line_items ORDER BY line_key",
        ),
        "credit_ledger": query(
            database_url,
            schema,
            "SELECT idempotency_key, customer_id, currency, grant_id, entry_type, amount, effective_at, line_key,"
            " aggregate_version, note FROM credit_ledger ORDER BY idempotency_key",
        ),
        "credit_grants": query(
            database_url,
            schema,
            "SELECT grant_id, customer_id, currency, amount, priority, remaining, expired FROM credit_grants"
            " ORDER BY grant_id",
        ),
        "credit_accounts": query(
            database_url,
            schema,
            "SELECT customer_id, currency, depletions FROM credit_accounts ORDER BY 1, 2",
        ),
        "invoice_sync": query(
            database_url,
            schema,
            "SELECT customer_id, period_start, currency, period_end, subscription_id, amount_total,"
            " credits_applied, amount_due, line_count, status FROM invoice_sync ORDER BY 1, 2, 3",
        ),
        "limit_outbox": query(
            database_url,
            schema,
            "SELECT limit_event_id, customer_id, kind, payload FROM limit_outbox ORDER BY 1",
        ),
        # ledger positions are entry ids: a rolled-back transaction leaves a gap in the sequence
        "balance_outbox": query(
            database_url,
            schema,
            "SELECT customer_id, currency, balance, published_at IS NOT NULL FROM balance_outbox"
            " ORDER BY customer_id, ledger_position",
        ),
    }


def limit_events(kafka_config: Mapping[str, Any], topics: Topics, idle_s: float = 1.0) -> list[LimitEvent]:
    return [
        codec(LimitEvent).decode(v) for _, v, _, _ in read_topic(kafka_config, topics.limits, idle_s=idle_s)
    ]


def dead_letters(kafka_config: Mapping[str, Any], topics: Topics, idle_s: float = 1.0) -> list[DeadLetter]:
    return [codec(DeadLetter).decode(v) for _, v, _, _ in read_topic(kafka_config, topics.dlq, idle_s=idle_s)]


@dataclass
class RatingProcess:
    """`python -m metergate_services.rating.main` as a child process (for real SIGKILLs)."""

    env: dict[str, str]
    log_path: Path
    child: ChildProcess | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return None if self.child is None else self.child.process

    def start(self, **extra_env: str) -> RatingProcess:
        # INFO: the tests read the accounting line each clean exit logs (rating_load.accounting)
        env = {"METERGATE_LOG_LEVEL": "INFO", **self.env, **extra_env, "PYTHONUNBUFFERED": "1"}
        self.child = ChildProcess(
            "rating",
            [sys.executable, "-m", "metergate_services.rating.main"],
            self.log_path,
            env=env,
            cwd=ROOT,
        )
        self.child.start()
        return self

    def wait_exit(self, timeout_s: float = 60.0) -> int:
        assert self.child is not None
        return self.child.wait(timeout_s)

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.child is not None
        self.child.signal(signal.SIGTERM)
        return self.child.wait(timeout_s)

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


CREDIT_CUSTOMERS = ("credit-1", "credit-2")


def feed_mixed_usage(feed: Feed) -> None:
    """~1,400 records: 12 customers x 2 meters x 2 periods x 25 versions, two prepaid customers
    (one key each: their credit runs out about 60% into the stream, twice), an unknown customer, junk."""
    plain = [f"cust-{i:02d}" for i in range(12)]
    for customer in plain:
        feed.snapshot(
            snapshot(customer, [metered("api_calls", PER_UNIT, "100"), metered("tokens", GRADUATED)])
        )
    for customer in CREDIT_CUSTOMERS:
        feed.snapshot(snapshot(customer, [metered("tokens", PER_UNIT)], base_fee="5"))
    for version in range(1, 41):
        for customer in plain:
            if version <= 25:
                feed.aggregate(aggregate(customer, "api_calls", str(250 * version), version))
                feed.aggregate(aggregate(customer, "tokens", str(90 * version), version))
                feed.aggregate(
                    aggregate(customer, "api_calls", str(70 * version), version, period_start=APRIL)
                )
                feed.aggregate(aggregate(customer, "tokens", str(40 * version), version, period_start=APRIL))
        for customer in CREDIT_CUSTOMERS:  # 0.002 per token: 1.00 per version, 24.00 of credit each
            total = 500 * version if version != 30 else 500 * 20  # version 30: a gauge falls back
            feed.aggregate(aggregate(customer, "tokens", str(total), version))
        if version % 4 == 0:
            feed.aggregate(aggregate("unknown", "api_calls", str(version), version))
        if version % 13 == 0:
            feed.raw(feed.topics.aggregates, b"junk", b"\x00not avro")
    feed.flush()


def grant_mixed_credit(database_url: str, schema: str) -> None:
    """Two grants of each prepaid customer: 14.00 (expires 2027) and 10.00 (expires Dec 2026)."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    engine = make_engine(database_url, schema)
    try:
        with engine.begin() as conn:
            for customer in CREDIT_CUSTOMERS:
                for suffix, amount, expires in (("a", "14.00", 2027), ("b", "10.00", 2026)):
                    expires_at = datetime(expires, 12 if expires == 2026 else 1, 1, tzinfo=UTC)
                    grant = Grant(
                        f"{customer}-{suffix}", customer, "USD", D(amount), 1, at, expires_at=expires_at
                    )
                    grant_credit(conn, grant)
    finally:
        engine.dispose()
