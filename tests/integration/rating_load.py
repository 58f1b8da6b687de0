"""A large, hand-computable rating load for the rebalance and kill tests.

Customers `c00000..`, each with api_calls (0.01 per call over 100 included) and, unless prepaid,
tokens (0.001 per token). Version v of every key is one *round*: api_calls = v x (10 + k % 50),
tokens = v x 10 x (1 + k % 7), so totals only grow and every amount is a whole number of cents.
The first `prepaid` customers have one grant of 3.00 and only api_calls (one key each: the order in
which credit is drawn cannot depend on how two partitions interleave).

`expected(plan, rounds)` computes by hand, without project code, what rating must have written:
every line item, every ledger entry, the invoice totals, the depletions.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from sqlalchemy import text

from metergate.db.credit_store import grant_credit
from metergate.db.engine import make_engine
from metergate.domain.ledger import Grant
from metergate.domain.records import Aggregation, EntitlementSnapshot, Pricing, PricingModel, UsageAggregate
from metergate.kafka.topics import Topics
from metergate.wire.codec import codec
from tests.integration.rating_support import APRIL, MARCH, metered, query, snapshot

API = Pricing(model=PricingModel.PER_UNIT, unit_price=D("0.01"))
TOKENS = Pricing(model=PricingModel.PER_UNIT, unit_price=D("0.001"))
GRANT = D("3.00")
PERIOD = MARCH.isoformat()


@dataclass(frozen=True)
class Plan:
    customers: int
    prepaid: int = 20

    def customer(self, k: int) -> str:
        return f"c{k:05d}"

    def meters(self, k: int) -> tuple[str, ...]:
        return ("api_calls",) if k < self.prepaid else ("api_calls", "tokens")

    @property
    def keys_per_round(self) -> int:
        return sum(len(self.meters(k)) for k in range(self.customers))


def value(k: int, meter: str, version: int) -> int:
    return version * (10 + k % 50) if meter == "api_calls" else version * 10 * (1 + k % 7)


def amount(meter: str, total: int) -> D:
    if meter == "api_calls":
        return D(max(0, total - 100)) * D("0.01")
    return D(total) * D("0.001")


class LoadFeed:
    """Produces the plan's snapshots and rounds (pre-encoded), remembering the aggregate end offsets."""

    def __init__(self, kafka_config: Mapping[str, Any], topics: Topics, plan: Plan) -> None:
        self.topics, self.plan = topics, plan
        self.producer = Producer({**kafka_config, "enable.idempotence": True, "linger.ms": 20})
        self.codec = codec(UsageAggregate)
        self.rounds = 0
        self.sent = 0
        self.ends: dict[int, int] = {}
        self._lock = threading.Lock()

    def _delivered(self, err: Any, msg: Any) -> None:
        assert err is None, err
        with self._lock:
            self.ends[msg.partition()] = max(self.ends.get(msg.partition(), 0), msg.offset() + 1)

    def _produce(self, topic: str, key: bytes, payload: bytes, on_delivery: Any = None) -> None:
        while True:
            try:
                self.producer.produce(topic, payload, key, on_delivery=on_delivery)
                return
            except BufferError:
                self.producer.poll(0.05)

    def snapshots(self) -> None:
        snapshots = codec(EntitlementSnapshot)
        for k in range(self.plan.customers):
            customer = self.plan.customer(k)
            features = [metered("api_calls", API, "100")]
            if k >= self.plan.prepaid:
                features.append(metered("tokens", TOKENS))
            self._produce(
                self.topics.snapshots, customer.encode(), snapshots.encode(snapshot(customer, features))
            )
        assert self.producer.flush(60) == 0

    def round(self) -> None:
        """Every key's next version."""
        version = self.rounds + 1
        for k in range(self.plan.customers):
            customer = self.plan.customer(k)
            for meter in self.plan.meters(k):
                aggregate = UsageAggregate(
                    customer_id=customer,
                    meter=meter,
                    aggregation=Aggregation.SUM,
                    period_start=MARCH,
                    period_end=APRIL,
                    value=D(value(k, meter, version)),
                    event_count=version,
                    version=version,
                    last_event_at=MARCH + timedelta(minutes=version),
                    last_event_id=f"{customer}-{meter}-{version}",
                    subscription_id=f"sub-{customer}",
                    updated_at=MARCH + timedelta(minutes=version),
                )
                self._produce(
                    self.topics.aggregates,
                    aggregate.key.encode(),
                    self.codec.encode(aggregate),
                    self._delivered,
                )
                self.sent += 1
            self.producer.poll(0)
        self.rounds = version

    def flush(self) -> None:
        assert self.producer.flush(120) == 0

    def aggregate_ends(self) -> dict[int, int]:
        with self._lock:
            return dict(self.ends)


class PacedRounds(threading.Thread):
    """Keeps adding rounds (at most `per_s` records a second) until stopped: a backlog that stays.

    With `backlog` (records produced but not committed yet) and `floor`, a round is also added at
    once whenever the backlog is below `floor`: however fast the workers rate on this machine,
    they do not run dry (a precondition a test states, not a speed it assumes)."""

    def __init__(
        self, feed: LoadFeed, per_s: float, backlog: Callable[[], int] | None = None, floor: int = 0
    ) -> None:
        super().__init__(name="paced-rounds", daemon=True)
        self.feed, self.per_s = feed, per_s
        self.backlog, self.floor = backlog, floor
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.monotonic()
            self.feed.round()
            self.feed.flush()
            if self.backlog is not None and self.backlog() < self.floor:
                continue
            self.stopped.wait(
                max(0.0, self.feed.plan.keys_per_round / self.per_s - (time.monotonic() - started))
            )

    def stop(self) -> None:
        self.stopped.set()
        self.join(120)


def grant_prepaid(database_url: str, schema: str, plan: Plan) -> None:
    engine = make_engine(database_url, schema)
    try:
        with engine.begin() as conn:
            for k in range(plan.prepaid):
                customer = plan.customer(k)
                grant_credit(
                    conn, Grant(f"g-{customer}", customer, "USD", GRANT, 1, datetime(2026, 1, 1, tzinfo=UTC))
                )
    finally:
        engine.dispose()


@dataclass
class Expected:
    lines: dict[str, tuple[D, D, D, int]]  # line_key -> (quantity, amount, credits_applied, version)
    ledger: set[tuple[str, str, D]]  # (idempotency_key, customer, amount), grants included
    invoices: dict[str, D]  # customer -> amount_total
    depleted: set[str]  # credits_depleted limit_event_ids


def expected(plan: Plan, rounds: int) -> Expected:
    lines: dict[str, tuple[D, D, D, int]] = {}
    ledger: set[tuple[str, str, D]] = set()
    invoices: dict[str, D] = {}
    depleted: set[str] = set()
    for k in range(plan.customers):
        customer = plan.customer(k)
        total = D(0)
        for meter in plan.meters(k):
            line_key = f"{customer}|sub-{customer}|{meter}|{PERIOD}|usage"
            final = amount(meter, value(k, meter, rounds))
            credits = D(0)
            if k < plan.prepaid:
                ledger.add((f"grant:g-{customer}", customer, GRANT))
                remaining, before = GRANT, D(0)
                for version in range(1, rounds + 1):
                    now = amount(meter, value(k, meter, version))
                    draw = min(now - before, remaining)
                    if draw > 0:
                        ledger.add((f"usage_debit:{line_key}|v{version}|g-{customer}", customer, -draw))
                        remaining -= draw
                        if remaining == 0:
                            depleted.add(f"{customer}|credits|USD|credits_depleted|1")
                    before = now
                credits = GRANT - remaining
            lines[line_key] = (D(value(k, meter, rounds)), final, credits, rounds)
            total += final
        invoices[customer] = total
    return Expected(lines, ledger, invoices, depleted)


def written(database_url: str, schema: str) -> Expected:
    lines = {
        key: (quantity, amount_, credits, version)
        for key, quantity, amount_, credits, version in query(
            database_url,
            schema,
            "SELECT line_key, quantity, amount, credits_applied, aggregate_version FROM line_items",
        )
    }
    ledger = set(
        query(database_url, schema, "SELECT idempotency_key, customer_id, amount FROM credit_ledger")  # type: ignore[arg-type]
    )
    invoices = dict(query(database_url, schema, "SELECT customer_id, amount_total FROM invoice_sync"))  # type: ignore[arg-type]
    depleted = {row[0] for row in query(database_url, schema, "SELECT limit_event_id FROM limit_outbox")}
    return Expected(lines, ledger, invoices, depleted)  # type: ignore[arg-type]


def committed(database_url: str, schema: str, group: str, topic: str) -> int:
    engine = make_engine(database_url, schema)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE consumer_group = :g AND topic = :t"
                    ),
                    {"g": group, "t": topic},
                ).scalar_one()
            )
    finally:
        engine.dispose()


ACCOUNTING = re.compile(r"rating: accounting (.*)$", re.MULTILINE)


def accounting(log_path: Path) -> list[dict[str, int]]:
    """The accounting line of every clean exit in a rating process's log."""
    found = []
    for match in ACCOUNTING.finditer(log_path.read_text(errors="replace")):
        found.append(
            {name: int(count) for name, count in (part.split("=") for part in match.group(1).split())}
        )
    return found
