"""The demo's usage mix, and what an independent count says it should add up to (pure: no I/O).

A deterministic mix (seeded) for the customers of `catalog.yaml`:

- hobby-hank (free): API calls through 80% and 90% of 1,000, to the hard limit, and past it;
- pixel-studio (pro v1): past 80% of its soft API-call limit, token overage, 12 distinct seats;
- nightly-ned (free, daily periods): one event three days late, counted to its own (closed) day;
- acme-corp (enterprise, custom contract): past 50% of its negotiated API-call limit into overage;
- nimbus-ai (pro, prepaid credits): token overage that drains its credits;
- walk-in (no subscription): counted in the calendar month, not priced;
- 2% of the events sent twice (same event_id), and malformed records: bytes that are not Avro,
  a record of an unknown schema, a negative quantity, an unknown meter, a far-future timestamp.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from metergate.domain.records import UsageEvent

#: credits granted to nimbus-ai before usage starts (USD)
NIMBUS_CREDITS = Decimal("3.00")


@dataclass(frozen=True)
class Malformed:
    key: bytes
    value: bytes
    expected_reason: str
    description: str


@dataclass
class Scenario:
    events: list[UsageEvent] = field(default_factory=list)  # in send order, duplicates included
    malformed: list[Malformed] = field(default_factory=list)
    duplicates: int = 0
    late_event_ids: list[str] = field(default_factory=list)

    def distinct(self) -> dict[tuple[str, str], UsageEvent]:
        out: dict[tuple[str, str], UsageEvent] = {}
        for event in self.events:
            out.setdefault((event.customer_id, event.event_id), event)
        return out

    def expected_sums(self) -> dict[tuple[str, str], Decimal]:
        """Independent SUM per (customer, meter) over the distinct events of the current period."""
        sums: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for event in self.distinct().values():
            if event.event_id not in self.late_event_ids:
                sums[(event.customer_id, event.meter)] += event.quantity
        return dict(sums)

    @property
    def records_sent(self) -> int:
        return len(self.events) + len(self.malformed)


def build_scenario(now: datetime, seed: int = 7) -> Scenario:
    """The usage mix for `now` (events spread over the hour before `now`)."""
    rng = random.Random(seed)
    scenario = Scenario()
    distinct: list[UsageEvent] = []
    counter = 0

    def event(customer: str, meter: str, quantity: Decimal | int, **extra: object) -> UsageEvent:
        nonlocal counter
        counter += 1
        when = extra.pop("timestamp", None) or now - timedelta(seconds=3600 * (1 - counter / 20000))
        return UsageEvent(
            event_id=f"{customer}-{counter:06d}",
            customer_id=customer,
            meter=meter,
            quantity=Decimal(quantity),
            timestamp=when,  # type: ignore[arg-type]
            source="demo",
            **extra,  # type: ignore[arg-type]
        )

    # hobby-hank: 1,005 single calls against a hard limit of 1,000
    distinct += [event("hobby-hank", "api_calls", 1) for _ in range(1005)]
    distinct += [event("hobby-hank", "tokens", 350) for _ in range(40)]
    # pixel-studio: 42,000 calls (soft limit 50,000: crosses 80%), 2.2M tokens, 12 seats
    distinct += [event("pixel-studio", "api_calls", 50) for _ in range(840)]
    distinct += [event("pixel-studio", "tokens", 20000) for _ in range(110)]
    distinct += [
        event("pixel-studio", "active_users", 1, properties={"user_id": f"user-{i % 12}"}) for i in range(60)
    ]
    distinct += [event("pixel-studio", "storage_gb", gb) for gb in (4, 9, 13, 11)]
    # nightly-ned (daily periods): today's calls, and one event of three days ago arriving now: its
    # period closed beyond the grace, inside the dedup window -> counted to its own day, flagged late
    distinct += [event("nightly-ned", "api_calls", 2) for _ in range(30)]
    late = event("nightly-ned", "api_calls", 7, timestamp=now - timedelta(days=3))
    scenario.late_event_ids.append(late.event_id)
    distinct.append(late)
    # acme-corp: 160,000 calls against 150,000 included (negotiated), limit 300,000
    distinct += [event("acme-corp", "api_calls", 200) for _ in range(800)]
    distinct += [event("acme-corp", "tokens", 50000) for _ in range(60)]
    # nimbus-ai: 3.5M tokens against 1M included -> 2.5M overage at 0.000002 = 5.00 > 3.00 credits
    distinct += [event("nimbus-ai", "tokens", 25000) for _ in range(140)]
    distinct += [event("nimbus-ai", "api_calls", 10) for _ in range(100)]
    # walk-in: no subscription
    distinct += [event("walk-in", "api_calls", 1) for _ in range(25)]

    rng.shuffle(distinct)
    distinct.sort(key=lambda e: (e.customer_id, e.meter, e.event_id))  # per-meter time order
    by_customer: dict[str, list[UsageEvent]] = defaultdict(list)
    for item in distinct:
        by_customer[item.customer_id].append(item)
    # interleave customers, keeping each customer's order; re-send 2% right after the original
    queues = {customer: list(items) for customer, items in by_customer.items()}
    while queues:
        customer = rng.choice(sorted(queues))
        item = queues[customer].pop(0)
        scenario.events.append(item)
        if rng.random() < 0.02:
            scenario.events.append(item)
            scenario.duplicates += 1
        if not queues[customer]:
            del queues[customer]
    scenario.malformed = malformed_records(now)
    return scenario


def malformed_records(now: datetime) -> list[Malformed]:
    from metergate.wire.codec import codec

    usage = codec(UsageEvent)
    base: dict[str, object] = {
        "event_id": "bad-0",
        "customer_id": "pixel-studio",
        "subject_id": None,
        "meter": "api_calls",
        "quantity": Decimal(1),
        "timestamp": now,
        "properties": {},
        "source": "demo",
    }
    return [
        Malformed(
            b"pixel-studio", b'{"meter": "api_calls", "quantity": 1}', "not_avro", "JSON instead of Avro"
        ),
        Malformed(
            b"pixel-studio", b"\xc3\x01" + b"\x13" * 8 + b"\x00", "unknown_schema", "a schema nobody knows"
        ),
        Malformed(
            b"pixel-studio",
            usage.encode_dict({**base, "event_id": "bad-negative", "quantity": Decimal(-5)}),
            "invalid_quantity",
            "negative quantity",
        ),
        Malformed(
            b"pixel-studio",
            usage.encode_dict({**base, "event_id": "bad-meter", "meter": "gpu_hours"}),
            "unknown_meter",
            "a meter not in the catalog",
        ),
        Malformed(
            b"pixel-studio",
            usage.encode_dict({**base, "event_id": "bad-future", "timestamp": now + timedelta(days=30)}),
            "future_timestamp",
            "a timestamp 30 days ahead",
        ),
    ]
