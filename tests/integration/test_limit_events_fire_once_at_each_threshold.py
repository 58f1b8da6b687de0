"""Thresholds 80/90/100% and a hard limit, a soft limit and overage: each limit event once per
period, with the exact usage at the event that crossed it."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metergate.domain.records import LimitKind, UsageEvent
from tests.integration.metering_support import EventProducer, Worker, limit_events, publish

pytestmark = pytest.mark.integration

CATALOG = {
    "meters": {"api_calls": {"aggregation": "SUM"}},
    "features": {"api_calls": {"kind": "metered", "meter": "api_calls"}},
    "plans": {
        "hard": {
            "features": {"api_calls": {"limit": 100, "enforcement": "hard", "thresholds": [80, 90, 100]}}
        },
        "soft": {"features": {"api_calls": {"limit": 50, "enforcement": "soft", "thresholds": [50]}}},
        "payg": {
            "features": {"api_calls": {"included": 30, "pricing": {"model": "per_unit", "unit_price": "0.1"}}}
        },
    },
    "subscriptions": {
        "hard-co": {"plan": "hard", "anchor": "2024-01-01"},
        "soft-co": {"plan": "soft", "anchor": "2024-01-01"},
        "payg-co": {"plan": "payg", "anchor": "2024-01-01"},
    },
}


def test_each_limit_event_once_with_the_exact_usage_figures(kafka_bootstrap, kafka_config, topics, tmp_path):
    publish(CATALOG, kafka_config, topics)
    now = datetime.now(UTC).replace(microsecond=0)
    this_month = now.replace(day=1, hour=0, minute=0, second=0)
    last_month = (this_month - timedelta(days=1)).replace(day=1)
    producer = EventProducer(kafka_config, topics)
    for customer in ("hard-co", "soft-co", "payg-co"):
        for index in range(20):  # 7 units each: 7, 14, ..., 140
            producer.send(
                UsageEvent(
                    event_id=f"{customer}-{index}",
                    customer_id=customer,
                    meter="api_calls",
                    quantity=Decimal(7),
                    timestamp=max(this_month, now - timedelta(hours=1)),
                )
            )
    for index in range(16):  # the same crossings again in the previous period (if inside the window)
        producer.send(
            UsageEvent(
                event_id=f"old-{index}",
                customer_id="hard-co",
                meter="api_calls",
                quantity=Decimal(7),
                timestamp=max(last_month, now - timedelta(days=30)),
            )
        )
    producer.flush()
    worker = Worker(kafka_bootstrap, topics, tmp_path / "worker").start()
    try:
        worker.wait_committed(kafka_config, topics.events, producer.end_offsets())
    finally:
        assert worker.stop() == 0, worker.tail()

    sent = limit_events(kafka_config, topics)
    assert max(Counter(e.limit_event_id for e in sent).values()) == 1
    found = {
        (e.customer_id, e.period_start.month, e.kind, e.threshold): (e.usage, e.event_id, e.limit)
        for e in sent
    }
    current, previous = this_month.month, max(last_month, now - timedelta(days=30)).month
    hard = Decimal(100)
    expected = {
        ("hard-co", current, LimitKind.THRESHOLD_CROSSED, 80): (Decimal(84), "hard-co-11", hard),
        ("hard-co", current, LimitKind.THRESHOLD_CROSSED, 90): (Decimal(91), "hard-co-12", hard),
        ("hard-co", current, LimitKind.THRESHOLD_CROSSED, 100): (Decimal(105), "hard-co-14", hard),
        ("hard-co", current, LimitKind.LIMIT_REACHED, None): (Decimal(105), "hard-co-14", hard),
        ("hard-co", current, LimitKind.HARD_LIMIT_EXCEEDED, None): (Decimal(105), "hard-co-14", hard),
        ("hard-co", previous, LimitKind.THRESHOLD_CROSSED, 80): (Decimal(84), "old-11", hard),
        ("hard-co", previous, LimitKind.THRESHOLD_CROSSED, 90): (Decimal(91), "old-12", hard),
        ("hard-co", previous, LimitKind.THRESHOLD_CROSSED, 100): (Decimal(105), "old-14", hard),
        ("hard-co", previous, LimitKind.LIMIT_REACHED, None): (Decimal(105), "old-14", hard),
        ("hard-co", previous, LimitKind.HARD_LIMIT_EXCEEDED, None): (Decimal(105), "old-14", hard),
        ("soft-co", current, LimitKind.THRESHOLD_CROSSED, 50): (Decimal(28), "soft-co-3", Decimal(50)),
        ("soft-co", current, LimitKind.LIMIT_REACHED, None): (Decimal(56), "soft-co-7", Decimal(50)),
        ("payg-co", current, LimitKind.OVERAGE_STARTED, None): (Decimal(35), "payg-co-4", None),
    }
    if previous == current:  # early in a month the "previous" events fall into the same period
        pytest.skip("the previous period is outside the dedup window today")
    assert found == expected
