"""SIGKILL the metering worker at each of the five steps of its commit order (once with its data dir deleted):
totals and limit events come out exact, none repeated, none missing."""

from __future__ import annotations

import random
import shutil
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metergate.domain.limits import due
from metergate.domain.periods import period_for
from metergate.domain.records import (
    Enforcement,
    FeatureEntitlement,
    FeatureKind,
    LimitKind,
    Pricing,
    PricingModel,
    ResetPeriod,
    UsageEvent,
    aggregate_key,
    limit_event_id,
)
from tests.integration.metering_support import (
    EventProducer,
    Worker,
    aggregate_versions_name_one_value,
    latest_aggregates,
    limit_events,
    publish,
)

pytestmark = pytest.mark.integration

ANCHOR = datetime(2024, 3, 31, tzinfo=UTC)
FEATURE = {
    "included": 500,
    "limit": 2000,
    "enforcement": "hard",
    "thresholds": [50, 80, 90, 100],
    "pricing": {"model": "per_unit", "unit_price": "0.01"},
}
CATALOG = {
    "meters": {"api_calls": {"aggregation": "SUM"}},
    "features": {"api_calls": {"kind": "metered", "meter": "api_calls"}},
    "plans": {"pro": {"features": {"api_calls": FEATURE}}},
    "subscriptions": {f"c{i}": {"plan": "pro", "anchor": ANCHOR.isoformat()} for i in range(60)},
}


def expected_limit_events(events: list[UsageEvent]) -> dict[str, tuple[Decimal, str]]:
    """Independently: walk each customer's events in log order, note the first event at which each
    limit event is due, with the usage figure at that event."""
    feature = FeatureEntitlement(
        feature="api_calls",
        kind=FeatureKind.METERED,
        meter="api_calls",
        included=Decimal(500),
        limit=Decimal(2000),
        enforcement=Enforcement.HARD,
        thresholds=(50, 80, 90, 100),
        pricing=Pricing(model=PricingModel.PER_UNIT, unit_price=Decimal("0.01")),
    )
    usage: dict[str, Decimal] = defaultdict(Decimal)
    found: dict[str, tuple[Decimal, str]] = {}
    for event in events:
        start = period_for(event.timestamp, ANCHOR, ResetPeriod.MONTHLY).start
        key = aggregate_key(event.customer_id, event.meter, start)
        usage[key] += event.quantity
        figure = usage[key]
        limit = feature.limit
        assert limit is not None
        conditions = [(LimitKind.THRESHOLD_CROSSED, t, figure * 100 >= limit * t) for t in feature.thresholds]
        conditions += [
            (LimitKind.OVERAGE_STARTED, None, figure > feature.included),
            (LimitKind.LIMIT_REACHED, None, figure >= limit),
            (LimitKind.HARD_LIMIT_EXCEEDED, None, figure > limit),
        ]
        for kind, threshold, met in conditions:
            name = limit_event_id(event.customer_id, "api_calls", start, kind, threshold)
            if met and name not in found:
                found[name] = (figure, event.event_id)
    assert len(due(feature, Decimal(10**6), set())) == 7  # the same seven kinds the worker knows
    return found


def test_sigkill_at_every_step_and_a_wiped_data_dir_leave_totals_and_limit_events_exact(
    kafka_bootstrap, kafka_config, topics, tmp_path
):
    rng = random.Random(11)
    publish(CATALOG, kafka_config, topics)
    now = datetime.now(UTC).replace(microsecond=0)
    events = [
        UsageEvent(
            event_id=f"evt-{i}",
            customer_id=f"c{rng.randrange(60)}",
            meter="api_calls",
            quantity=Decimal(rng.randrange(1, 11)),
            timestamp=now - timedelta(seconds=rng.randrange(0, 3600)),
        )
        for i in range(20_000)
    ]
    producer = EventProducer(kafka_config, topics)
    for event in events:
        producer.send(event)
    producer.flush()
    ends = producer.end_offsets()
    total = sum(offset + 1 for offset in ends.values())

    data_dir = tmp_path / "worker"
    worker = Worker(kafka_bootstrap, topics, data_dir, batch_size=300)
    progress = []
    try:
        _crash_at_every_step_then_finish(worker, kafka_config, topics, data_dir, ends, total, progress)
    finally:
        worker.kill()
    _check(events, kafka_config, topics)


def _crash_at_every_step_then_finish(worker, kafka_config, topics, data_dir, ends, total, progress):
    for crash_point, batches, wipe_after in (
        ("outputs_partial", 3, False),  # some limit events sent, no state: they must not be re-sent
        ("outputs_sent", 2, False),  # every output of a batch sent, no state
        ("changelog_sent", 2, False),  # the whole changelog of a batch, no local state, no offset
        ("changelog_partial", 3, True),  # half the changelog of a batch; then the data dir is deleted
        ("state_written", 2, False),  # durable state, consumer offsets not committed yet
    ):
        worker.start(crash_point=crash_point, crash_after_batches=batches)
        assert worker.wait_exit(90) == -9, worker.tail()
        progress.append(worker.committed_count(kafka_config, topics.events, ends))
        if wipe_after:
            shutil.rmtree(data_dir / "rocksdb")
    assert 0 < progress[-1] < total, progress  # every kill happened mid-stream
    worker.start()
    worker.wait_committed(kafka_config, topics.events, ends)
    assert worker.stop() == 0, worker.tail()


def _check(events, kafka_config, topics):
    totals: dict[str, tuple[Decimal, int]] = defaultdict(lambda: (Decimal(0), 0))
    for event in events:
        start = period_for(event.timestamp, ANCHOR, ResetPeriod.MONTHLY).start
        key = aggregate_key(event.customer_id, event.meter, start)
        value, count = totals[key]
        totals[key] = (value + event.quantity, count + 1)
    aggregates = latest_aggregates(kafka_config, topics)
    assert {key: (a.value, a.event_count) for key, a in aggregates.items()} == dict(totals)
    assert aggregate_versions_name_one_value(kafka_config, topics)

    sent = limit_events(kafka_config, topics)
    repeated = [name for name, count in Counter(e.limit_event_id for e in sent).items() if count > 1]
    assert repeated == []
    expected = expected_limit_events(events)
    assert {e.limit_event_id: (e.usage, e.event_id) for e in sent} == expected
