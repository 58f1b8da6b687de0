"""Metering's rules for one batch of usage.events records (pure: no Kafka, no RocksDB, no clock).

`MeteringCore.meter_batch(runs, state, now_ms) -> BatchEffects` decides, for each record of each
run (a run: consecutive records of one partition, already checked to start at the partition's
stored position + 1 by the caller), exactly one outcome, and what it changes:

| outcome | when | effect |
| --- | --- | --- |
| rejected | undecodable, bad shape (`check_shape`), a first copy out of the clock rules (`check_time`), an unknown meter or missing unique property (`check_meter`), a SUM past decimal(38, 9) | a `DeadLetter` with the reason |
| forwarded | valid, but the customer is counted on another partition (`canonical_partition`) | the record, to be re-produced to that partition |
| duplicate | a later copy of an (customer, event_id) already counted (`dedup.classify`) | a `DuplicateReceipt` naming both copies |
| accepted | the first copy (or its replay) of a valid event | folded into the total of (customer, meter, period), limit events due, a dedup entry |

Rules applied on the way, each written where it lives: the customer's terms are those in force at
the event's time (`Catalog.snapshot(customer, event_ms)`: a late event or a replay is metered as it
was when it happened); periods follow the customer's snapshot
(`periods.period_for`: billing anchor and reset period; calendar month UTC without a subscription);
a total of a period that ended more than `late_grace_ms` ago is marked `late`; the total carries
the subscription terms of the snapshot in force when it was last folded (the *version rule*: one
version = 1 + the offset of the last event folded in, set by the caller when it publishes) and,
once an event is counted under other terms than the total's (another snapshot whose validity
starts elsewhere in the period: an upgrade, a cancellation), the part counted under each terms in
force (`PeriodTotal.segments`, keyed by the start of the terms' validity clipped to the period:
`metergate.domain.aggregation`); limits still apply to the whole period's total; a record
whose offset is at or below the total's `applied_offset` is a replay already in the total: it counts
as accepted and re-records its dedup entry, but folds nothing.

Totals are the caller's: `state.total` may return an object the core changes in place (the caller
drops whatever it cached when a batch does not commit).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from metergate.domain.aggregation import PeriodTotal, RunningTotal
from metergate.domain.dedup import FirstSeen, Verdict, classify
from metergate.domain.limits import DueLimit, due, first_due, watches
from metergate.domain.partitioning import partition_for
from metergate.domain.periods import period_for
from metergate.domain.records import (
    Aggregation,
    DeadLetter,
    DuplicateReceipt,
    EntitlementSnapshot,
    FeatureEntitlement,
    KafkaPosition,
    LimitEvent,
    MeterDefinition,
    ResetPeriod,
    aggregate_key_from_iso,
    limit_event_id,
)
from metergate.domain.usage import Rejection, check_meter, check_shape, check_time

SERVICE = "metering"
#: outcomes of an input record, in the order of the counters kept per partition
ACCEPTED, DUPLICATE, REJECTED, FORWARDED = range(4)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Consumed(Protocol):
    """What the rules need of a consumed record."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None


#: a consumed record with its decoded datum (timestamp in ms, quantity a Decimal), or why it could
#: not be decoded
Decoded = tuple[Consumed, "dict[str, Any] | Rejection"]


class Catalog(Protocol):
    def meter(self, name: str) -> MeterDefinition | None: ...

    def snapshot(self, customer_id: str, at_ms: int) -> EntitlementSnapshot | None:
        """The customer's terms in force at `at_ms` (the event's time)."""
        ...


class MeteringState(Protocol):
    """The committed state the rules read (the caller's store, caches and recovered marks)."""

    def first_seen_many(self, ids: Sequence[tuple[str, str]]) -> Sequence[FirstSeen | None]:
        """Dedup entries of (customer_id, event_id) pairs, in order."""
        ...

    def total(self, key: str) -> PeriodTotal | None: ...

    def sent_marks(self, partition: int, key: str) -> Iterable[str]:
        """Limit marks an interrupted batch is known to have sent for the total `key`."""
        ...


@dataclass(frozen=True, slots=True)
class MeteringRules:
    #: the partition count the state is built for: a customer is counted on partition_for(id, N)
    partitions: int
    dedup_window_ms: int
    future_skew_ms: int
    late_grace_ms: int
    #: usage.events' name, for the positions dead letters and receipts name
    events_topic: str


@dataclass(frozen=True, slots=True)
class Forward:
    partition: int  # where it was read
    to: int  # its customer's canonical partition
    record: Consumed
    customer_id: str


@dataclass
class BatchEffects:
    """What one batch changes, for the caller to make durable (the commit order)."""

    now_ms: int
    #: aggregate key -> (partition, total) of every total the batch folded into
    totals: dict[str, tuple[int, PeriodTotal]] = field(default_factory=dict)
    #: per partition: the dedup entries of first copies, (customer_id, event_id, where)
    new_seen: dict[int, list[tuple[str, str, FirstSeen]]] = field(default_factory=lambda: defaultdict(list))
    forwards: list[Forward] = field(default_factory=list)
    dead_letters: list[tuple[int, DeadLetter]] = field(default_factory=list)
    receipts: list[tuple[int, DuplicateReceipt]] = field(default_factory=list)
    #: (partition, event, kafka timestamp ms of the crossing record)
    limit_events: list[tuple[int, LimitEvent, int | None]] = field(default_factory=list)
    #: per partition: [accepted, duplicates, rejected, forwarded]
    outcomes: dict[int, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0]))
    #: per partition: the last input offset the batch decided
    last_offset: dict[int, int] = field(default_factory=dict)
    rejected_by_reason: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    limit_kinds: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: kafka timestamps (ms) of accepted records, for the processing-latency metric
    latencies_from_ms: list[int] = field(default_factory=list)
    #: in-batch dedup entries (customer_id, event_id) -> first copy
    seen: dict[tuple[str, str], FirstSeen] = field(default_factory=dict)

    def count(self, outcome: int) -> int:
        return sum(counts[outcome] for counts in self.outcomes.values())


class _Terms:
    """A customer's snapshot as the rules use it, with what is derived from it once: the period
    last used and its aggregate keys per meter, the features each meter's limits watch, and per
    total the usage below which no limit event can be due."""

    __slots__ = (
        "anchor",
        "floors",
        "keys",
        "period",
        "plan_key",
        "plan_version",
        "reset",
        "segment_start",
        "snapshot",
        "subscription_id",
        "valid_from_ms",
        "watched",
    )

    def __init__(self, snapshot: EntitlementSnapshot | None) -> None:
        self.snapshot = snapshot
        subscribed = snapshot is not None and snapshot.subscription_id is not None
        self.subscription_id = snapshot.subscription_id if subscribed and snapshot else None
        self.plan_key = snapshot.plan_key if subscribed and snapshot else None
        self.plan_version = snapshot.plan_version if subscribed and snapshot else None
        if snapshot is None or not subscribed or snapshot.billing_anchor is None:
            # no subscription: calendar month UTC
            self.anchor: datetime | None = None
            self.reset = ResetPeriod.MONTHLY
        else:
            self.anchor, self.reset = snapshot.billing_anchor, snapshot.reset_period
        self.valid_from_ms = (
            millis(snapshot.valid_from) if snapshot is not None and snapshot.valid_from is not None else None
        )
        #: where these terms start inside `period` (None: at its start), the key of their segment
        self.segment_start: int | None = None
        self.period: tuple[str, int, int] | None = None
        self.keys: dict[str, str] = {}
        self.watched: dict[str, tuple[FeatureEntitlement, ...]] = {}
        self.floors: dict[str, tuple[int, Decimal | None]] = {}


def _lowest(features: Sequence[FeatureEntitlement], emitted: set[str]) -> Decimal | None:
    floors = [floor for floor in (first_due(feature, emitted) for feature in features) if floor is not None]
    return min(floors) if floors else None


class MeteringCore:
    """The rules, with caches of what repeats across batches (canonical partitions, and per
    customer `_Terms`). Pure: everything it reads comes in as arguments."""

    def __init__(self, rules: MeteringRules, catalog: Catalog) -> None:
        self.rules = rules
        self.catalog = catalog
        self._canonical: dict[str, int] = {}
        self._terms: dict[str, _Terms] = {}
        #: (customer, id(snapshot)) -> the `_Terms` of a customer's other snapshots used lately
        self._other_terms: dict[tuple[str, int], _Terms] = {}

    def canonical_partition(self, customer_id: str) -> int:
        found = self._canonical.get(customer_id)
        if found is None:
            if len(self._canonical) > 1_000_000:
                self._canonical.clear()
            found = self._canonical[customer_id] = partition_for(customer_id, self.rules.partitions)
        return found

    def meter_batch(
        self, runs: Sequence[tuple[int, Sequence[Decoded]]], state: MeteringState, now_ms: int
    ) -> BatchEffects:
        effects = BatchEffects(now_ms=now_ms)
        for partition, records in runs:
            if records:
                self._run(partition, records, state, effects)
        return effects

    def _run(
        self, partition: int, records: Sequence[Decoded], state: MeteringState, fx: BatchEffects
    ) -> None:
        fx.last_offset[partition] = records[-1][0].offset
        valid: list[tuple[Consumed, dict[str, Any]]] = []
        for record, datum in records:
            if isinstance(datum, Rejection):
                self._reject(partition, record, datum, fx)
                continue
            rejection = check_shape(datum)
            if rejection is not None:
                self._reject(partition, record, rejection, fx)
                continue
            customer = datum["customer_id"]
            canonical = self.canonical_partition(customer)
            if canonical != partition:
                fx.outcomes[partition][FORWARDED] += 1
                fx.forwards.append(Forward(partition, canonical, record, customer))
                continue
            valid.append((record, datum))
        ids = [(datum["customer_id"], datum["event_id"]) for _, datum in valid]
        stored = state.first_seen_many(ids)
        meters: dict[str, MeterDefinition | None] = {}  # the catalog's meters, looked up once a run
        latencies = fx.latencies_from_ms
        for (record, datum), event, first_seen in zip(valid, ids, stored, strict=True):
            latencies.append(record.timestamp or fx.now_ms)
            self._event(partition, record, datum, event, fx.seen.get(event) or first_seen, meters, state, fx)

    def _event(
        self,
        partition: int,
        record: Consumed,
        datum: dict[str, Any],
        event: tuple[str, str],
        seen: FirstSeen | None,
        meters: dict[str, MeterDefinition | None],
        state: MeteringState,
        fx: BatchEffects,
    ) -> None:
        rules = self.rules
        verdict = classify(seen, partition, record.offset)
        if verdict is Verdict.DUPLICATE:
            assert seen is not None
            self._receipt(partition, record, datum, seen, fx)
            return
        event_ms: int = datum["timestamp"]
        now_ms = fx.now_ms
        if verdict is Verdict.FIRST and not (
            now_ms - rules.dedup_window_ms <= event_ms <= now_ms + rules.future_skew_ms
        ):  # the common case decided here; check_time words the rejection
            rejection = check_time(
                event_ms, now_ms, future_skew_ms=rules.future_skew_ms, window_ms=rules.dedup_window_ms
            )
            if rejection is not None:
                self._reject(partition, record, rejection, fx)
                return
        name = datum["meter"]
        meter = meters.get(name)
        if meter is None:
            meter = meters[name] = self.catalog.meter(name)
        if meter is None or meter.aggregation is Aggregation.UNIQUE_COUNT:
            rejection = check_meter(datum, meter)
            if rejection is not None:
                self._reject(partition, record, rejection, fx)
                return
        assert meter is not None
        self._fold(
            partition, record, datum, meter, event_ms, state, fx, event if verdict is Verdict.FIRST else None
        )

    def _fold(
        self,
        partition: int,
        record: Consumed,
        datum: dict[str, Any],
        meter: MeterDefinition,
        event_ms: int,
        state: MeteringState,
        fx: BatchEffects,
        first: tuple[str, str] | None,
    ) -> None:
        """Fold an accepted event into its total; `first`: its dedup id, when it is the first copy."""
        customer = datum["customer_id"]
        terms = self._terms_of(customer, event_ms)
        period = terms.period
        if period is None or not period[1] <= event_ms < period[2]:
            period = self._period(terms, event_ms)
        name = meter.meter
        key = terms.keys.get(name)
        if key is None:
            key = terms.keys[name] = aggregate_key_from_iso(customer, name, period[0])
        entry = fx.totals.get(key)
        if entry is None:
            found = state.total(key)
            if found is None:
                found = PeriodTotal(
                    customer,
                    name,
                    period[1],
                    period[2],
                    None,
                    None,
                    None,
                    RunningTotal(meter.aggregation),
                    terms.segment_start,
                )
            found.total.emitted.update(state.sent_marks(partition, key))
        else:
            found = entry[1]
        total = found.total
        applied = record.offset <= total.applied_offset
        if not applied and total.would_overflow(datum["quantity"]):
            self._reject(
                partition,
                record,
                Rejection(
                    "total_overflow",
                    f"quantity: adding {datum['quantity']} would take the {name} total of customer "
                    f"{customer!r} for the period from {period[0]} past decimal(38, 9) (below 10^29); "
                    "not counted",
                ),
                fx,
            )
            return
        if first is not None:
            seen = FirstSeen(partition, record.offset, event_ms)
            fx.seen[first] = seen
            fx.new_seen[partition].append((customer, first[1], seen))
        fx.outcomes[partition][ACCEPTED] += 1
        if applied:
            # a replay whose effect is already in this total; its dedup entry may not be durable
            # yet (a crash between the changelog's records), so it was recorded again just above
            return
        unique = None
        if meter.unique_property:
            unique = (datum.get("properties") or {}).get(meter.unique_property)
        if found.segments is not None or terms.segment_start != found.terms_start_ms:
            # the terms changed during the period: the part counted under each is kept apart
            found.fold_segment(
                terms.segment_start,
                terms.subscription_id,
                terms.plan_key,
                terms.plan_version,
                datum["quantity"],
                event_ms,
                datum["event_id"],
                unique,
            )
        total.fold(datum["quantity"], event_ms, datum["event_id"], unique)
        total.applied_offset = record.offset
        if period[2] + self.rules.late_grace_ms < fx.now_ms:
            total.late = True
        if terms.subscription_id is not None:
            found.subscription_id = terms.subscription_id
            found.plan_key = terms.plan_key
            found.plan_version = terms.plan_version
        if entry is None:
            fx.totals[key] = (partition, found)
        watched = terms.watched.get(name)
        if watched is None:
            watched = terms.watched[name] = self._features(terms.snapshot, name)
        if not watched:
            return
        # one comparison per event until a limit event can be due (limits.first_due)
        floor = terms.floors.get(key)
        if floor is None or floor[0] != len(total.emitted):
            floor = terms.floors[key] = (len(total.emitted), _lowest(watched, total.emitted))
        if floor[1] is None or total.value < floor[1]:
            return
        for feature in watched:
            for item in due(feature, total.value, total.emitted):
                total.emitted.add(item.mark)
                self._limit(partition, record, datum, found, item, fx)

    def _terms_of(self, customer: str, event_ms: int) -> _Terms:
        """What the rules need of the customer's terms in force at the event's time, derived once
        per snapshot."""
        snapshot = self.catalog.snapshot(customer, event_ms)
        terms = self._terms.get(customer)
        if terms is None or terms.snapshot is not snapshot:
            terms = self._switch(customer, snapshot, terms)
        return terms

    def _switch(self, customer: str, snapshot: EntitlementSnapshot | None, last: _Terms | None) -> _Terms:
        """The customer's event is under another snapshot than the last one (a new snapshot, or an
        event on the other side of a change): what was derived from each is kept, so events that
        alternate around a change (late ones, replays) do not derive it again each time."""
        if len(self._terms) > 200_000:
            self._terms.clear()
        if len(self._other_terms) > 200_000:
            self._other_terms.clear()
        if last is not None:
            self._other_terms[(customer, id(last.snapshot))] = last
        terms = self._other_terms.pop((customer, id(snapshot)), None)
        if terms is None or terms.snapshot is not snapshot:
            terms = _Terms(snapshot)
        self._terms[customer] = terms
        return terms

    @staticmethod
    def _period(terms: _Terms, event_ms: int) -> tuple[str, int, int]:
        """The customer's period holding `event_ms` (start ISO, start ms, end ms), kept in `terms`."""
        period = period_for(from_millis(event_ms), terms.anchor, terms.reset)
        found = terms.period = (period.start.isoformat(), millis(period.start), millis(period.end))
        terms.keys = {}
        valid_from = terms.valid_from_ms
        terms.segment_start = None if valid_from is None or valid_from <= found[1] else valid_from
        return found

    @staticmethod
    def _features(snapshot: EntitlementSnapshot | None, meter: str) -> tuple[FeatureEntitlement, ...]:
        """The features of `snapshot` on `meter` that can call for a limit event."""
        if snapshot is None:
            return ()
        return tuple(feature for feature in snapshot.metered(meter) if watches(feature))

    # -- the records an outcome produces --------------------------------------------------------
    def _reject(self, partition: int, record: Consumed, rejection: Rejection, fx: BatchEffects) -> None:
        fx.rejected_by_reason[rejection.reason] += 1
        fx.outcomes[partition][REJECTED] += 1
        dead = DeadLetter.model_construct(
            reason=rejection.reason,
            message=rejection.message,
            original_key=record.key,
            original_value=record.value,
            source=KafkaPosition.model_construct(
                topic=self.rules.events_topic, partition=partition, offset=record.offset
            ),
            service=SERVICE,
            rejected_at=from_millis(fx.now_ms),
        )
        fx.dead_letters.append((partition, dead))

    def _receipt(
        self, partition: int, record: Consumed, datum: dict[str, Any], seen: FirstSeen, fx: BatchEffects
    ) -> None:
        fx.outcomes[partition][DUPLICATE] += 1
        topic = self.rules.events_topic
        receipt = DuplicateReceipt.model_construct(
            customer_id=datum["customer_id"],
            event_id=datum["event_id"],
            meter=datum["meter"],
            quantity=datum["quantity"],
            first_seen=KafkaPosition.model_construct(
                topic=topic, partition=seen.partition, offset=seen.offset
            ),
            duplicate=KafkaPosition.model_construct(topic=topic, partition=partition, offset=record.offset),
            received_at=from_millis(fx.now_ms),
        )
        fx.receipts.append((partition, receipt))

    def _limit(
        self,
        partition: int,
        record: Consumed,
        datum: dict[str, Any],
        found: PeriodTotal,
        item: DueLimit,
        fx: BatchEffects,
    ) -> None:
        period_start = from_millis(found.period_start_ms)
        event = LimitEvent.model_construct(
            limit_event_id=limit_event_id(
                found.customer_id, item.feature, period_start, item.kind, item.threshold
            ),
            kind=item.kind,
            customer_id=found.customer_id,
            subject_id=datum.get("subject_id"),
            feature=item.feature,
            meter=found.meter,
            period_start=period_start,
            period_end=from_millis(found.period_end_ms),
            threshold=item.threshold,
            usage=found.total.value,
            limit=item.limit,
            event_id=datum["event_id"],
            occurred_at=from_millis(datum["timestamp"]),  # event time of the crossing event
        )
        fx.limit_kinds[item.kind.value] += 1
        fx.limit_events.append((partition, event, record.timestamp))


def millis(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_millis(value: int) -> datetime:
    return datetime.fromtimestamp(value // 1000, UTC).replace(microsecond=(value % 1000) * 1000)


__all__ = [
    "ACCEPTED",
    "DUPLICATE",
    "FORWARDED",
    "REJECTED",
    "BatchEffects",
    "Catalog",
    "Consumed",
    "Decoded",
    "Forward",
    "MeteringCore",
    "MeteringRules",
    "MeteringState",
    "from_millis",
    "millis",
]
