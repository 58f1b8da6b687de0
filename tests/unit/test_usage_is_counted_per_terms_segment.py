"""A period total keeps the part counted under each terms in force (an upgrade on day 15: the
Growth part and the Scale part), publishes it on usage.aggregates and keeps it in the worker's
state; while one terms is in force all period nothing more is kept or sent. Limits still look at
the whole period's total. No broker, no store."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import fastavro
import pytest

from metergate.domain.aggregation import PeriodTotal
from metergate.domain.metering import MeteringCore, MeteringRules, millis
from metergate.domain.rating import AggregateUpdate, SegmentUpdate
from metergate.domain.records import (
    Aggregation,
    Enforcement,
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    LimitKind,
    MeterDefinition,
    TermsSegment,
    UsageAggregate,
)
from metergate.domain.terms import DatedTerms
from metergate.wire.codec import MAGIC, _fingerprint, codec
from metergate.wire.fastwire import read_aggregate
from metergate_services.metering.commit import _published
from metergate_services.metering.store import decode_total, encode_total
from tests.unit.test_metering_rules_of_a_batch import Record, State

pytestmark = pytest.mark.unit

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
RULES = MeteringRules(
    partitions=1,
    dedup_window_ms=40 * 86_400_000,
    future_skew_ms=300_000,
    late_grace_ms=86_400_000,
    events_topic="usage.events",
)
METERS = {
    "api_calls": MeterDefinition(meter="api_calls", aggregation=Aggregation.SUM),
    "requests": MeterDefinition(meter="requests", aggregation=Aggregation.COUNT),
    "peak": MeterDefinition(meter="peak", aggregation=Aggregation.MAX),
    "gauge": MeterDefinition(meter="gauge", aggregation=Aggregation.LATEST),
    "seats": MeterDefinition(meter="seats", aggregation=Aggregation.UNIQUE_COUNT, unique_property="user"),
}


def at(day: int, hour: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=UTC)


NOW = at(20, 12)
NOVEMBER, DECEMBER = at(1), datetime(2026, 12, 1, tzinfo=UTC)


def snapshot(
    plan: str, version: int, start: datetime, end: datetime | None, limit: int | None = None
) -> EntitlementSnapshot:
    calls = FeatureEntitlement(
        feature="api_calls",
        kind=FeatureKind.METERED,
        meter="api_calls",
        limit=None if limit is None else D(limit),
        enforcement=Enforcement.HARD if limit else Enforcement.NONE,
    )
    return EntitlementSnapshot(
        customer_id="acme",
        subscription_id="acme",
        plan_key=plan,
        plan_version=1,
        billing_anchor=NOVEMBER,
        features=(calls,),
        version=version,
        updated_at=start,
        valid_from=start,
        valid_to=end,
    )


class Catalog:
    def __init__(self, *snapshots: EntitlementSnapshot) -> None:
        self.terms = DatedTerms()
        for one in snapshots:
            self.terms.remember(one)

    def meter(self, name: str) -> MeterDefinition | None:
        return METERS.get(name)

    def snapshot(self, customer_id: str, at_ms: int) -> EntitlementSnapshot | None:
        return self.terms.at(customer_id, at_ms)


def upgraded(limit: int | None = None) -> Catalog:
    """Growth from 1 November to the 15th, Scale from then on (both dated, as the relay sends them)."""
    return Catalog(snapshot("growth", 1, NOVEMBER, at(15)), snapshot("scale", 2, at(15), None, limit))


def event(
    event_id: str, quantity: str, when: datetime, meter: str = "api_calls", **extra: Any
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "customer_id": "acme",
        "meter": meter,
        "quantity": D(quantity),
        "timestamp": millis(when),
        **extra,
    }


def meter(catalog: Catalog, events: list[dict[str, Any]], state: State | None = None, first: int = 0):
    core, state = MeteringCore(RULES, catalog), state or State()
    fx = core.meter_batch(
        [(0, [(Record(first + i), datum) for i, datum in enumerate(events)])], state, millis(NOW)
    )
    state.commit(fx)
    return fx, state


def published(found: PeriodTotal) -> UsageAggregate:
    found.total.version = found.total.applied_offset + 1
    return codec(UsageAggregate).decode(_published(found, millis(NOW)))


def the_total(state: State, meter_name: str = "api_calls") -> PeriodTotal:
    (found,) = [t for t in state.totals.values() if t.meter == meter_name]
    return found


def test_an_upgrade_on_day_15_keeps_the_growth_part_and_the_scale_part_of_the_total() -> None:
    _fx, state = meter(
        upgraded(),
        [
            event("g1", "2000000", at(2)),
            event("g2", "2000000", at(5)),
            event("s1", "15000000", at(16)),
            event("g3", "2000000", at(14, 23)),  # late: read after the upgrade, counted under Growth
            event("s2", "15000000", at(18)),
        ],
    )
    found = the_total(state)
    assert (found.total.value, found.total.event_count) == (D(36_000_000), 5)  # limits see this
    aggregate = published(found)
    assert [(s.start, s.plan_key, s.value, s.event_count) for s in aggregate.segments] == [
        (NOVEMBER, "growth", D(6_000_000), 3),  # 2M + 2M + 2M
        (at(15), "scale", D(30_000_000), 2),  # 15M + 15M
    ]
    assert aggregate.plan_key == "scale"  # the stamp: the terms of the last event folded in... (s2)
    assert {s.subscription_id for s in aggregate.segments} == {"acme"}
    # the fast reader rating uses reads the same segments
    assert read_aggregate(_published(found, millis(NOW))).segments == (
        SegmentUpdate(NOVEMBER, "acme", "growth", 1, D(6_000_000), 3),
        SegmentUpdate(at(15), "acme", "scale", 1, D(30_000_000), 2),
    )


def test_one_terms_all_period_keeps_no_segments_and_publishes_none() -> None:
    catalog = Catalog(snapshot("growth", 1, NOVEMBER, None))
    _, state = meter(catalog, [event("a", "5", at(2)), event("b", "7", at(16))])
    found = the_total(state)
    assert found.segments is None and found.terms_start_ms is None
    assert published(found).segments == ()
    # a subscription that starts on the 10th (anchor 1 November): its one segment starts there
    late_start = Catalog(snapshot("growth", 1, at(10), None))
    _, state = meter(late_start, [event("a", "5", at(12)), event("b", "7", at(16))])
    found = the_total(state)
    assert found.segments is None and found.terms_start_ms == millis(at(10))


def test_a_replayed_event_folds_nothing_into_its_segment() -> None:
    catalog = upgraded()
    events = [event("g1", "2", at(2)), event("s1", "3", at(16))]
    _, state = meter(catalog, events)
    _, state = meter(catalog, events, state)  # the same offsets read again (a crash before the commit)
    found = the_total(state)
    assert [(s.total.value, s.total.event_count) for s in found.segments or []] == [(D(2), 1), (D(3), 1)]
    assert found.total.value == D(5)


def test_max_latest_count_and_unique_count_segments_hold_their_own_events_value() -> None:
    catalog = upgraded()
    events = [
        event("p1", "9", at(2), meter="peak"),
        event("p2", "4", at(16), meter="peak"),
        event("l1", "7", at(3), meter="gauge"),
        event("l2", "2", at(17), meter="gauge"),
        event("l3", "5", at(14), meter="gauge"),  # later than l1 in its segment, earlier than l2
        event("r1", "100", at(2), meter="requests"),
        event("r2", "100", at(3), meter="requests"),
        event("r3", "100", at(16), meter="requests"),
        event("u1", "1", at(2), meter="seats", properties={"user": "ann"}),
        event("u2", "1", at(3), meter="seats", properties={"user": "bob"}),
        event("u3", "1", at(16), meter="seats", properties={"user": "ann"}),  # seen under both terms
    ]
    _, state = meter(catalog, events)

    def parts(name: str) -> tuple[D, list[tuple[D, int]]]:
        found = the_total(state, name)
        return found.total.value, [(s.total.value, s.total.event_count) for s in found.segments or []]

    assert parts("peak") == (D(9), [(D(9), 1), (D(4), 1)])
    assert parts("gauge") == (D(2), [(D(5), 2), (D(2), 1)])
    assert parts("requests") == (D(3), [(D(2), 2), (D(1), 1)])
    assert parts("seats") == (D(2), [(D(2), 2), (D(1), 1)])  # ann and bob; ann again


def test_segments_survive_the_state_encoding_and_a_total_stored_before_them_still_decodes() -> None:
    _, state = meter(upgraded(), [event("g1", "2", at(2)), event("s1", "3", at(16)), event("u", "1", at(17))])
    found = the_total(state)
    assert decode_total(encode_total(found)) == found
    _, state = meter(
        upgraded(),
        [
            event("u1", "1", at(2), meter="seats", properties={"user": "ann"}),
            event("u2", "1", at(16), meter="seats", properties={"user": "bob"}),
        ],
    )
    seats = the_total(state, "seats")
    assert decode_total(encode_total(seats)) == seats
    # as the worker wrote totals before segments existed: no "ts", no "sg"
    old = json.loads(encode_total(found))
    old.pop("ts", None)
    del old["sg"]
    before = decode_total(json.dumps(old).encode())
    assert (before.segments, before.terms_start_ms, before.total) == (None, None, found.total)


def test_limits_apply_to_the_whole_period_total_not_to_a_segment() -> None:
    """Scale's hard limit of 30M: 6M under Growth and 25M under Scale exceed it (31M), although the
    Scale segment alone (25M) does not."""
    fx, _state = meter(
        upgraded(limit=30_000_000), [event("g", "6000000", at(2)), event("s", "25000000", at(16))]
    )
    kinds = [(e.kind, e.usage) for _, e, _ in fx.limit_events]
    assert kinds == [(LimitKind.LIMIT_REACHED, D(31_000_000)), (LimitKind.HARD_LIMIT_EXCEEDED, D(31_000_000))]


def test_an_aggregate_written_with_the_previous_schema_reads_with_no_segments() -> None:
    fields = {
        "customer_id": "acme",
        "meter": "api_calls",
        "aggregation": "SUM",
        "period_start": millis(NOVEMBER),
        "period_end": millis(DECEMBER),
        "value": D("12.5"),
        "event_count": 3,
        "version": 7,
        "last_event_at": millis(at(3)),
        "last_event_id": "e3",
        "late": False,
        "subscription_id": "acme",
        "plan_key": "growth",
        "plan_version": 1,
        "updated_at": millis(NOW),
    }
    old = fastavro.parse_schema(json.loads((SCHEMAS / "history" / "UsageAggregate.v1.avsc").read_text()))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, old, fields)
    written_before = MAGIC + _fingerprint(old) + body.getvalue()
    aggregates = codec(UsageAggregate)
    assert written_before[2:10] != aggregates.schema.fingerprint  # another writer schema
    read = aggregates.decode(written_before)
    assert read.segments == () and read.value == D("12.5")
    assert read_aggregate(written_before) == AggregateUpdate.of(read)
    segment = TermsSegment(start=at(15), value=D(1), event_count=1)
    with_one = read.model_copy(update={"segments": (segment,)})
    assert aggregates.decode(aggregates.encode(with_one)) == with_one
