"""The metering step: one batch of usage.events records in, counted usage and signals out.

The rules live in `metergate.domain` (usage acceptance, dedup verdicts, periods, folds, limits);
this module applies them to a batch, keeps the batch's state in memory, and makes the result durable
in the order below. It runs in one worker thread (the Faust agent hands it batches); it does no
Faust and no asyncio.

WHICH RECORDS A BATCH MAY APPLY (the position rule)
--------------------------------------------------
A run of records of partition p is applied only if it starts exactly at p's stored position + 1
(the input watermark + 1, or the end of the run before it in the same batch). Records at or below
the watermark are re-reads and skipped. A run that starts further on is a fault of ours (records
fetched for an earlier assignment, a consumer that jumped): it is dropped and the partition is
re-sought to the watermark + 1 (`BatchOutcome.reseek`), never jumped over. The one exception is
checked against the broker, never assumed: when the log itself holds no record between the
watermark and the run's first offset (transaction markers, retention), the run is applied and the
missing offsets are counted as `gaps`. Records of a partition this worker no longer owns never
reach `process` (app.py keeps the set of owned partitions from the rebalance callbacks).

WHERE A CUSTOMER IS COUNTED (the canonical partition)
----------------------------------------------------
Every total, dedup entry and limit mark of a customer lives with one partition: `partition_for
(customer_id, N)` (murmur2, metergate.kafka.partitioner), N = the partition count the state was
built for (that of the changelog). A valid record read on another partition (a null key, a key
that is not the customer id, another partitioner, partitions added since) is FORWARDED: re-produced
unchanged to its canonical partition (header `metergate-forwarded-from: p:offset`) in step 1 and
counted there. A forward re-sent after a crash is a second copy of the event on the canonical
partition: deduplicated there like any producer retry (a receipt, never counted twice).

COMMIT ORDER of a batch (`_commit`), and what a crash between two steps does
-------------------------------------------------------------------------------
0. Compute in memory: for each record after the partition's input watermark: decode, validate,
   forward it if its customer belongs to another partition, dedup verdict, period, fold into the
   running total (only if the record's offset is above the total's own `applied_offset`), limit
   events due (not in the total's `emitted` marks, which are updated in the same in-memory state).
1. Send the outputs: forwards, DLQ records, duplicate receipts, limit events (each to the partition
   of the input partition, so recovery knows where to look), then one UsageAggregate per touched key, whose
   version is 1 + the offset of the last event folded in. FLUSH and check every delivery.
   Crash during 1: some outputs are out, no state is. The restart reprocesses the batch: totals
   come out the same (same fold; a version names the last event folded in, so a re-sent aggregate
   repeats its version with the same value, and consumers keep the highest version per key). Limit events, receipts and DLQ records are NOT re-sent: recovery
   reads usage.limits / usage.duplicates / usage.dlq from the offsets stored with the last committed
   batch and suppresses what is already there (limit marks; receipt and DLQ ids).
2. Append the new state to the changelog topic (partition = input partition): one record per
   touched total (carrying its applied_offset, version and emitted marks), one record with the
   batch's new dedup entries, and the partition watermark (input offset + output positions). FLUSH.
   Crash during 2: the changelog may hold part of the batch. With the data dir intact, the local
   state is the previous batch's and recovery applies the changelog tail: totals in it are newer and
   carry their applied_offset, so their events are not folded twice; dedup entries carry the offset
   of their first copy, so a re-read first copy is a REPLAY, not a duplicate. Same with a wiped data
   dir, from changelog offset 0. Limit events in the changelog's marks were all delivered in step 1.
3. Write the same state to the local RocksDB in one WriteBatch (atomic), with the changelog position.
   Crash before 3: as in 2 (the changelog is the source of truth; local state is a checkpoint of it).
4. The agent commits the consumer-group offsets (input watermark + 1), only ever what step 3 made
   durable, and only for partitions it still owns. Crash before 4: the group offset lags; records
   at or below the stored input watermark are skipped on re-read.

ACCOUNTING: every input offset up to the watermark is exactly one of accepted, duplicate, rejected,
forwarded (or a gap of the log), kept in the partition's watermark with the state (store.py), so
`input + 1 == accepted + duplicates + rejected + forwarded + gaps` holds durably, across crashes.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from rocksdict import WriteBatch

from metergate.domain.aggregation import RunningTotal
from metergate.domain.dedup import FirstSeen, Verdict, classify
from metergate.domain.limits import due, mark, watches
from metergate.domain.periods import Period, period_for
from metergate.domain.records import (
    DeadLetter,
    DuplicateReceipt,
    EntitlementSnapshot,
    FeatureEntitlement,
    LimitEvent,
    MeterDefinition,
    ResetPeriod,
    UsageAggregate,
    UsageEvent,
    aggregate_key,
    aggregate_key_from_iso,
    limit_event_id,
)
from metergate.domain.usage import Rejection, check_meter, check_shape, check_time
from metergate.errors import DecodeError, DeliveryError
from metergate.kafka.partitioner import partition_for
from metergate.kafka.topics import Topics
from metergate.wire.codec import codec
from metergate_services.metering import metrics
from metergate_services.metering.fastwire import read_event, write_aggregate
from metergate_services.metering.store import (
    AGGREGATE,
    WATERMARK,
    StateStore,
    StoredTotal,
    Watermark,
    decode_dedup_group,
    decode_seen,
    dedup_key,
    encode_dedup_group,
    encode_seen,
)

log = logging.getLogger(__name__)

SERVICE = "metering"
CHANGELOG_WATERMARK_KEY = b"w"
CHANGELOG_DEDUP_PREFIX = b"d\x00"
DEDUP_GROUP = 5000
FORWARDED_FROM = "metergate-forwarded-from"
#: outcomes of an input record, in the order of the counters kept per partition
ACCEPTED, DUPLICATE, REJECTED, FORWARDED = range(4)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class KafkaRecord(Protocol):
    """What the processor needs of a consumed record (aiokafka's ConsumerRecord has it)."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None


@dataclass
class _Pending:
    """One batch's effects, in memory until `_commit`."""

    now_ms: int
    totals: dict[str, tuple[int, StoredTotal]] = field(default_factory=dict)  # key -> (partition, aggregate)
    seen: dict[bytes, FirstSeen] = field(default_factory=dict)
    new_seen: dict[int, list[tuple[str, str, FirstSeen]]] = field(default_factory=lambda: defaultdict(list))
    input_offsets: dict[int, int] = field(default_factory=dict)
    skipped_to: dict[int, int] = field(default_factory=dict)
    #: per partition: the offset the next run must start at (see the position rule)
    next_offset: dict[int, int] = field(default_factory=dict)
    #: partitions whose run did not start where it must: re-seek them to this offset
    reseek: dict[int, int] = field(default_factory=dict)
    #: per partition: [accepted, duplicates, rejected, forwarded] of this batch
    outcomes: dict[int, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0]))
    gaps: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    forwards: list[tuple[int, int, KafkaRecord, bytes]] = field(default_factory=list)  # p, to, record, key
    dead: list[tuple[int, str, str, bytes, dict[str, Any]]] = field(
        default_factory=list
    )  # p, guard, reason, value, dict
    receipts: list[tuple[int, str, bytes, dict[str, Any]]] = field(default_factory=list)
    limits: list[tuple[int, bytes, dict[str, Any], int | None]] = field(default_factory=list)
    latencies_from_ms: list[int] = field(default_factory=list)
    accepted: int = 0
    duplicates: int = 0
    forwarded: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    limit_kinds: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass(frozen=True)
class BatchOutcome:
    committed: Mapping[int, int]  # partition -> highest input offset now durable
    consumed: int
    accepted: int
    duplicates: int
    rejected: int
    limit_events: int
    forwarded: int = 0
    #: partition -> offset to seek to: a run did not start at the stored position + 1 (position rule)
    reseek: Mapping[int, int] = field(default_factory=dict)
    limit_sent_at: Sequence[
        tuple[int, float]
    ] = ()  # (kafka timestamp ms of the crossing event, delivered at)


class MeteringProcessor:
    def __init__(
        self,
        *,
        topics: Topics,
        changelog_topic: str,
        store: StateStore,
        meters: Callable[[str], MeterDefinition | None],
        snapshots: Callable[[str], EntitlementSnapshot | None],
        refresh_catalog: Callable[[], bool],
        producer: Producer,
        client_config: Mapping[str, Any],
        partitions: int,
        dedup_window_ms: int,
        future_skew_ms: int,
        late_grace_ms: int,
        recovery_idle_s: float = 0.3,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        crash_point: str | None = None,
        crash_after_batches: int = 1,
    ) -> None:
        self.topics = topics
        self.changelog_topic = changelog_topic
        self.store = store
        self.meters = meters
        self.snapshots = snapshots
        self.refresh_catalog = refresh_catalog
        self.producer = producer
        self.client_config = dict(client_config)
        #: the partition count the state is built for: a customer's canonical partition is
        #: partition_for(customer_id, partitions)
        self.partitions = partitions
        self._canonical: dict[str, int] = {}
        #: (partition, offset) -> first offset the log holds at or after it (position rule)
        self._log_holds: dict[tuple[int, int], int] = {}
        self.window_ms = dedup_window_ms
        self.skew_ms = future_skew_ms
        self.grace_ms = late_grace_ms
        self.recovery_idle_s = recovery_idle_s
        self.clock_ms = clock_ms
        self.watermarks: dict[int, Watermark] = {}
        self.crash_point = crash_point
        self.crash_after_batches = crash_after_batches
        self._batches_done = 0
        self._revoked: set[int] = set()
        #: committed totals kept between batches (they are mutated in place by a batch; a batch that
        #: fails clears the cache, see `process`)
        self._cache: dict[str, StoredTotal] = {}
        self._period_cache: dict[tuple[str, int | None, str], tuple[Period, str, int, int]] = {}
        self._feature_cache: dict[tuple[str, int, str], tuple[FeatureEntitlement, ...]] = {}
        self._event_codec = codec(UsageEvent)
        self._aggregate_codec = codec(UsageAggregate)
        self._limit_codec = codec(LimitEvent)
        self._receipt_codec = codec(DuplicateReceipt)
        self._dead_codec = codec(DeadLetter)

    # -- partition ownership --------------------------------------------------------------------------
    def revoke(self, partitions: Iterable[int]) -> None:
        """Called from the Faust loop on revocation; applied at the start of the next batch."""
        self._revoked.update(partitions)

    def _apply_revocations(self) -> None:
        if self._revoked:
            self._cache.clear()  # another worker may change those keys meanwhile
        while self._revoked:
            partition = self._revoked.pop()
            self.watermarks.pop(partition, None)

    # -- the batch ----------------------------------------------------------------------------------
    def process(
        self, batches: Sequence[tuple[int, Sequence[KafkaRecord]]], assigned: Iterable[int] = ()
    ) -> BatchOutcome:
        self._apply_revocations()
        missing = {p for p, _ in batches if p not in self.watermarks} | {
            p for p in assigned if p not in self.watermarks
        }
        if missing:
            self.recover(sorted(missing))
        pending = _Pending(now_ms=self.clock_ms())
        if log.isEnabledFor(logging.DEBUG):
            oldest = min((r[0].timestamp or pending.now_ms for _, r in batches if r), default=pending.now_ms)
            log.debug(
                "batch of %d records, oldest %d ms old",
                sum(len(r) for _, r in batches),
                pending.now_ms - oldest,
            )
        try:
            for partition, records in batches:
                self._partition(partition, records, pending)
            sent_at = self._commit(pending)
        except BaseException:
            # in-memory state may hold this batch's uncommitted effects: forget it all, so the next
            # attempt starts from durable state (recovery runs again)
            self._cache.clear()
            self.watermarks.clear()
            raise
        if len(self._cache) > 500_000:
            self._cache.clear()
        for key, (_partition, aggregate) in pending.totals.items():
            self._cache[key] = aggregate
        consumed = pending.accepted + pending.duplicates + sum(pending.rejected.values()) + pending.forwarded
        metrics.EVENTS_CONSUMED.inc(consumed)
        metrics.EVENTS_ACCEPTED.inc(pending.accepted)
        metrics.EVENTS_DUPLICATE.inc(pending.duplicates)
        metrics.EVENTS_FORWARDED.inc(pending.forwarded)
        for partition, gaps in pending.gaps.items():
            metrics.OFFSET_GAPS.labels(str(partition)).inc(gaps)
        for partition in pending.input_offsets:
            watermark = self.watermarks[partition]
            metrics.ACCOUNTED.labels(str(partition), "accepted").set(watermark.accepted)
            metrics.ACCOUNTED.labels(str(partition), "duplicate").set(watermark.duplicates_counted)
            metrics.ACCOUNTED.labels(str(partition), "rejected").set(watermark.rejected)
            metrics.ACCOUNTED.labels(str(partition), "forwarded").set(watermark.forwarded)
            metrics.ACCOUNTED.labels(str(partition), "gap").set(watermark.gaps)
            metrics.ACCOUNTED.labels(str(partition), "input").set(watermark.input + 1)
        for reason, count in pending.rejected.items():
            metrics.EVENTS_REJECTED.labels(reason).inc(count)
        for kind, count in pending.limit_kinds.items():
            metrics.LIMIT_EVENTS.labels(kind).inc(count)
        done_s = time.time()
        for from_ms in pending.latencies_from_ms:
            metrics.PROCESSING_LATENCY.observe(max(0.0, done_s - from_ms / 1000))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("batch done in %d ms", self.clock_ms() - pending.now_ms)
        return BatchOutcome(
            committed={p: self.watermarks[p].input for p in {*pending.input_offsets, *pending.skipped_to}},
            consumed=consumed,
            accepted=pending.accepted,
            duplicates=pending.duplicates,
            rejected=sum(pending.rejected.values()),
            limit_events=len(pending.limits),
            forwarded=pending.forwarded,
            reseek=dict(pending.reseek),
            limit_sent_at=sent_at,
        )

    def _partition(self, partition: int, records: Sequence[KafkaRecord], pending: _Pending) -> None:
        """Apply one run of records of a partition, if it starts where the partition stands."""
        watermark = self.watermarks[partition]
        expected = pending.next_offset.get(partition, watermark.input + 1)
        fresh = [record for record in records if record.offset >= expected]
        if len(fresh) < len(records) and partition not in pending.input_offsets:
            # re-read records already durable (a crash after step 3, before step 4): nothing to do
            # but let the group offset catch up with the stored watermark
            pending.skipped_to[partition] = watermark.input
        if not fresh:
            return
        if fresh[0].offset != expected:
            if self._log_holds_from(partition, expected) != fresh[0].offset:
                # a record between the position and this run exists: the run is not the next one
                log.warning(
                    "partition %d: run starts at offset %d, the partition stands at %d: re-seeking",
                    partition,
                    fresh[0].offset,
                    expected,
                )
                pending.reseek[partition] = expected
                return
            pending.gaps[partition] += fresh[0].offset - expected
        pending.reseek.pop(partition, None)
        pending.next_offset[partition] = fresh[-1].offset + 1
        pending.input_offsets[partition] = fresh[-1].offset
        # decode the whole run first, then look every dedup key up in one multi-get
        decoded: list[tuple[KafkaRecord, dict[str, Any] | None, Rejection | None]] = []
        keys: list[bytes] = []
        decode = read_event
        for record in fresh:
            try:
                datum = decode(record.value)
            except DecodeError as exc:
                decoded.append((record, None, Rejection(exc.reason, exc.message)))
                continue
            rejection = check_shape(datum)
            if rejection is None:
                customer = datum["customer_id"]
                canonical = self._canonical.get(customer)
                if canonical is None:
                    canonical = self._canonical[customer] = partition_for(customer, self.partitions)
                if canonical != partition:
                    self._forward(partition, canonical, record, customer, pending)
                    continue
                keys.append(dedup_key(customer, datum["event_id"]))
            decoded.append((record, datum, rejection))
        stored = dict(zip(keys, self.store.seen_many(keys), strict=True))
        for record, datum, rejection in decoded:
            if rejection is not None or datum is None:
                assert rejection is not None
                self._reject(partition, record, rejection, pending)
                continue
            pending.latencies_from_ms.append(record.timestamp or pending.now_ms)
            self._event(partition, record, datum, stored, pending)

    def _log_holds_from(self, partition: int, offset: int) -> int | None:
        """The first offset at or after `offset` that partition's log holds, read from the broker
        (offsets never change, so an answer is kept)."""
        found = self._log_holds.get((partition, offset))
        if found is None:
            found = first_offset_from(self.client_config, self.topics.events, partition, offset)
            if found is not None:
                self._log_holds[(partition, offset)] = found
        return found

    def _event(
        self,
        partition: int,
        record: KafkaRecord,
        datum: dict[str, Any],
        stored: Mapping[bytes, bytes | None],
        pending: _Pending,
    ) -> None:
        customer, event_id = datum["customer_id"], datum["event_id"]
        key = dedup_key(customer, event_id)
        seen = pending.seen.get(key)
        if seen is None:
            raw = stored.get(key)
            seen = None if raw is None else decode_seen(raw)
        verdict = classify(seen, partition, record.offset)
        if verdict is Verdict.DUPLICATE:
            assert seen is not None
            self._receipt(partition, record, datum, seen, pending)
            return
        event_ms = datum["timestamp"]  # int milliseconds (fastwire.read_event)
        if verdict is Verdict.FIRST:
            rejection = check_time(
                event_ms, pending.now_ms, future_skew_ms=self.skew_ms, window_ms=self.window_ms
            )
            if rejection is not None:
                self._reject(partition, record, rejection, pending)
                return
        meter = self.meters(datum["meter"])
        if meter is None and self.refresh_catalog():
            meter = self.meters(datum["meter"])
        rejection = check_meter(datum, meter)
        if rejection is not None:
            self._reject(partition, record, rejection, pending)
            return
        assert meter is not None
        self._fold(
            partition, record, datum, meter, event_ms, pending, key if verdict is Verdict.FIRST else None
        )

    def _fold(
        self,
        partition: int,
        record: KafkaRecord,
        datum: dict[str, Any],
        meter: MeterDefinition,
        event_ms: int,
        pending: _Pending,
        first_key: bytes | None,
    ) -> None:
        """Fold an accepted event into its total; `first_key`: its dedup key, when it is the first copy."""
        customer = datum["customer_id"]
        snapshot = self.snapshots(customer)
        _, start_iso, start_ms, end_ms = self._period(customer, snapshot, event_ms)
        key = aggregate_key_from_iso(customer, meter.meter, start_iso)
        entry = pending.totals.get(key)
        if entry is None:
            aggregate = self._cache.get(key) or self.store.aggregate(key)
            if aggregate is None:
                aggregate = StoredTotal(
                    customer, meter.meter, start_ms, end_ms, None, None, None, RunningTotal(meter.aggregation)
                )
            aggregate.total.emitted.update(self.watermarks[partition].marks.get(key, ()))
        else:
            aggregate = entry[1]
        total = aggregate.total
        applied = record.offset <= total.applied_offset
        if not applied and total.would_overflow(datum["quantity"]):
            self._reject(
                partition,
                record,
                Rejection(
                    "total_overflow",
                    f"quantity: adding {datum['quantity']} would take the {meter.meter} total of customer "
                    f"{customer!r} for the period from {start_iso} past decimal(38, 9) (below 10^29); "
                    "not counted",
                ),
                pending,
            )
            return
        if first_key is not None:
            first = FirstSeen(partition, record.offset, event_ms)
            pending.seen[first_key] = first
            pending.new_seen[partition].append((customer, datum["event_id"], first))
        if applied:
            # a replay whose effect is already in this total (see COMMIT ORDER, step 2); its dedup
            # entry may not be durable yet (a crash inside step 2), so it was recorded just above
            pending.accepted += 1
            pending.outcomes[partition][ACCEPTED] += 1
            return
        unique = None
        if meter.unique_property:
            unique = (datum.get("properties") or {}).get(meter.unique_property)
        total.fold(datum["quantity"], event_ms, datum["event_id"], unique)
        total.applied_offset = record.offset
        if end_ms + self.grace_ms < pending.now_ms:
            total.late = True
        if snapshot is not None and snapshot.subscription_id is not None:
            aggregate.subscription_id = snapshot.subscription_id
            aggregate.plan_key = snapshot.plan_key
            aggregate.plan_version = snapshot.plan_version
        pending.totals[key] = (partition, aggregate)
        pending.accepted += 1
        pending.outcomes[partition][ACCEPTED] += 1
        if snapshot is not None:
            for feature in self._watched(snapshot, meter.meter):
                for item in due(feature, total.value, total.emitted):
                    total.emitted.add(item.mark)
                    self._limit(partition, record, datum, aggregate, item.feature, item, pending)

    def _period(
        self, customer: str, snapshot: EntitlementSnapshot | None, event_ms: int
    ) -> tuple[Period, str, int, int]:
        if snapshot is None or snapshot.subscription_id is None or snapshot.billing_anchor is None:
            anchor, anchor_ms, reset = None, None, ResetPeriod.MONTHLY
        else:
            anchor, reset = snapshot.billing_anchor, snapshot.reset_period
            anchor_ms = _millis(anchor)
        cache_key = (customer, anchor_ms, reset.value)
        cached = self._period_cache.get(cache_key)
        if cached is not None and cached[2] <= event_ms < cached[3]:
            return cached
        period = period_for(_from_millis(event_ms), anchor, reset)
        found = (period, period.start.isoformat(), _millis(period.start), _millis(period.end))
        if len(self._period_cache) > 200_000:
            self._period_cache.clear()
        self._period_cache[cache_key] = found
        return found

    def _watched(self, snapshot: EntitlementSnapshot, meter: str) -> tuple[FeatureEntitlement, ...]:
        cache_key = (snapshot.customer_id, snapshot.version, meter)
        found = self._feature_cache.get(cache_key)
        if found is None:
            found = tuple(feature for feature in snapshot.metered(meter) if watches(feature))
            if len(self._feature_cache) > 200_000:
                self._feature_cache.clear()
            self._feature_cache[cache_key] = found
        return found

    # -- outputs ------------------------------------------------------------------------------------
    def _forward(
        self, partition: int, canonical: int, record: KafkaRecord, customer: str, pending: _Pending
    ) -> None:
        pending.forwarded += 1
        pending.outcomes[partition][FORWARDED] += 1
        pending.forwards.append((partition, canonical, record, customer.encode()))

    def _reject(self, partition: int, record: KafkaRecord, rejection: Rejection, pending: _Pending) -> None:
        pending.rejected[rejection.reason] += 1
        pending.outcomes[partition][REJECTED] += 1
        guard = f"dlq:{partition}:{record.offset}"
        value = {
            "reason": rejection.reason,
            "message": rejection.message,
            "original_key": record.key,
            "original_value": record.value,
            "source": {"topic": self.topics.events, "partition": partition, "offset": record.offset},
            "service": SERVICE,
            "rejected_at": pending.now_ms,
        }
        pending.dead.append((partition, guard, rejection.reason, record.key or b"", value))

    def _receipt(
        self, partition: int, record: KafkaRecord, datum: dict[str, Any], seen: FirstSeen, pending: _Pending
    ) -> None:
        pending.duplicates += 1
        pending.outcomes[partition][DUPLICATE] += 1
        value = {
            "customer_id": datum["customer_id"],
            "event_id": datum["event_id"],
            "meter": datum["meter"],
            "quantity": datum["quantity"],
            "first_seen": {"topic": self.topics.events, "partition": seen.partition, "offset": seen.offset},
            "duplicate": {"topic": self.topics.events, "partition": partition, "offset": record.offset},
            "received_at": pending.now_ms,
        }
        pending.receipts.append(
            (partition, f"dup:{partition}:{record.offset}", datum["customer_id"].encode(), value)
        )

    def _limit(
        self,
        partition: int,
        record: KafkaRecord,
        datum: dict[str, Any],
        aggregate: StoredTotal,
        feature: str,
        item: Any,
        pending: _Pending,
    ) -> None:
        period_start = _from_millis(aggregate.period_start_ms)  # for the deterministic id
        value = {
            "limit_event_id": limit_event_id(
                aggregate.customer_id, feature, period_start, item.kind, item.threshold
            ),
            "kind": item.kind.value,
            "customer_id": aggregate.customer_id,
            "subject_id": datum.get("subject_id"),
            "feature": feature,
            "meter": aggregate.meter,
            "period_start": period_start,
            "period_end": aggregate.period_end_ms,
            "threshold": item.threshold,
            "usage": aggregate.total.value,
            "limit": item.limit,
            "event_id": datum["event_id"],
            "occurred_at": datum["timestamp"],  # event time of the crossing event, ms
        }
        pending.limit_kinds[item.kind.value] += 1
        pending.limits.append((partition, aggregate.customer_id.encode(), value, record.timestamp))

    # -- durability (see COMMIT ORDER in the module docstring) ---------------------------------------
    def _commit(self, pending: _Pending) -> list[tuple[int, float]]:
        producer = self.producer
        failures: list[str] = []
        positions: dict[tuple[str, int], int] = {}
        sent_at: list[tuple[int, float]] = []

        def remember(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                failures.append(f"{msg.topic()}: {err}")
                return
            key = (msg.topic(), msg.partition())
            if msg.offset() >= positions.get(key, -1):
                positions[key] = msg.offset()

        def tracked(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                failures.append(f"{msg.topic()}: {err}")

        def send(
            topic: str,
            key: bytes | None,
            value: bytes | None,
            partition: int | None,
            callback: Any,
            headers: list[tuple[str, str | bytes | None]] | None = None,
        ) -> None:
            while True:
                try:
                    if partition is None:
                        producer.produce(topic, value, key, on_delivery=callback)
                    elif headers is None:
                        producer.produce(topic, value, key, partition=partition, on_delivery=callback)
                    else:
                        producer.produce(
                            topic, value, key, partition=partition, on_delivery=callback, headers=headers
                        )
                    return
                except BufferError:
                    producer.poll(0.01)

        # step 1: outputs
        for partition, canonical, record, customer_key in pending.forwards:
            origin = f"{partition}:{record.offset}".encode()
            send(
                self.topics.events, customer_key, record.value, canonical, tracked, [(FORWARDED_FROM, origin)]
            )
        for partition, guard, _reason, dead_key, value in pending.dead:
            if guard in self.watermarks[partition].guards:
                continue
            send(self.topics.dlq, dead_key or None, self._dead_codec.encode_dict(value), None, remember)
        for partition, guard, receipt_key, value in pending.receipts:
            if guard in self.watermarks[partition].guards:
                continue
            send(
                self.topics.duplicates,
                receipt_key,
                self._receipt_codec.encode_dict(value),
                partition,
                remember,
            )
        limit_timestamps: list[int | None] = []
        for index, (partition, limit_key, value, event_ts) in enumerate(pending.limits):
            send(self.topics.limits, limit_key, self._limit_codec.encode_dict(value), partition, remember)
            limit_timestamps.append(event_ts)
            if index == len(pending.limits) // 2 and self.crash_point == "outputs_partial":
                self._flush(failures)
                self._maybe_crash("outputs_partial")
        for key, (_partition, aggregate) in pending.totals.items():
            # version = 1 + offset of the last event folded in: strictly increasing per key (a key's
            # events all live in one partition), and the same version always means the same events,
            # whatever batch boundaries a replay after a crash happens to have (a counter per
            # publication would give one version two different values)
            aggregate.total.version = aggregate.total.applied_offset + 1
            send(
                self.topics.aggregates,
                key.encode(),
                _published(aggregate, pending.now_ms),
                None,
                tracked,
            )
        self._flush(failures)
        self._maybe_crash("outputs_sent")
        delivered_s = time.time()
        sent_at = [(ts, delivered_s) for ts in limit_timestamps if ts is not None]

        # step 2: changelog (partition = input partition)
        touched = set(pending.input_offsets)
        new_watermarks: dict[int, Watermark] = {}
        for partition in touched:
            old = self.watermarks[partition]
            written = {key for key, (p, _) in pending.totals.items() if p == partition}
            new_input = pending.input_offsets[partition]
            new_watermarks[partition] = Watermark(
                marks={key: marks for key, marks in old.marks.items() if key not in written},
                guards=[guard for guard in old.guards if int(guard.rsplit(":", 1)[1]) > new_input],
                input=new_input,
                changelog=old.changelog,
                limits=positions.get((self.topics.limits, partition), old.limits - 1) + 1,
                duplicates=positions.get((self.topics.duplicates, partition), old.duplicates - 1) + 1,
                dlq=positions.get((self.topics.dlq, 0), old.dlq - 1) + 1
                if any(p == partition for p, *_ in pending.dead)
                else old.dlq,
                accepted=old.accepted + pending.outcomes[partition][ACCEPTED],
                duplicates_counted=old.duplicates_counted + pending.outcomes[partition][DUPLICATE],
                rejected=old.rejected + pending.outcomes[partition][REJECTED],
                forwarded=old.forwarded + pending.outcomes[partition][FORWARDED],
                gaps=old.gaps + pending.gaps.get(partition, 0),
            )
        changelog_positions: dict[int, int] = {}

        def logged(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                failures.append(f"{msg.topic()}: {err}")
            elif msg.offset() >= changelog_positions.get(msg.partition(), -1):
                changelog_positions[msg.partition()] = msg.offset()

        local = WriteBatch(raw_mode=True)
        for index, (key, (partition, aggregate)) in enumerate(pending.totals.items()):
            encoded = aggregate.encode()
            send(self.changelog_topic, AGGREGATE + key.encode(), encoded, partition, logged)
            local.put(AGGREGATE + key.encode(), encoded)
            if index == len(pending.totals) // 2 and self.crash_point == "changelog_partial":
                self._flush(failures)
                self._maybe_crash("changelog_partial")
        for partition, entries in pending.new_seen.items():
            # one changelog record per DEDUP_GROUP entries (a record must stay well below the
            # broker's message size limit; 5,000 entries are ~0.3 MB)
            for start in range(0, len(entries), DEDUP_GROUP):
                group = entries[start : start + DEDUP_GROUP]
                send(
                    self.changelog_topic,
                    CHANGELOG_DEDUP_PREFIX + str(group[0][2].offset).encode(),
                    encode_dedup_group(group),
                    partition,
                    logged,
                )
            for customer, event_id, seen in entries:
                local.put(dedup_key(customer, event_id), encode_seen(seen))
        for partition, watermark in new_watermarks.items():
            send(
                self.changelog_topic,
                self._watermark_key(partition),
                watermark.encode(),
                self._changelog_partition(partition),
                logged,
            )
        self._flush(failures)
        self._maybe_crash("changelog_sent")

        # step 3: local checkpoint, one atomic write
        for partition, watermark in new_watermarks.items():
            watermark.changelog = (
                changelog_positions.get(self._changelog_partition(partition), watermark.changelog - 1) + 1
            )
            local.put(WATERMARK + str(partition).encode(), watermark.encode())
            self.watermarks[partition] = watermark
        self.store.write(local)
        self._maybe_crash("state_written")
        self._batches_done += 1
        return sent_at

    def _maybe_crash(self, point: str) -> None:
        """Fault injection for the tests of the commit order: SIGKILL ourselves at a named step."""
        if self.crash_point == point and self._batches_done + 1 >= self.crash_after_batches:
            log.warning("fault injection: SIGKILL at %s in batch %d", point, self._batches_done + 1)
            os.kill(os.getpid(), signal.SIGKILL)

    def _flush(self, failures: list[str]) -> None:
        remaining = self.producer.flush(60)
        if remaining:
            raise DeliveryError(f"{remaining} record(s) still undelivered after 60 s")
        if failures:
            raise DeliveryError(f"{len(failures)} record(s) not delivered; first: {failures[0]}")

    # -- recovery -----------------------------------------------------------------------------------
    def recover(self, partitions: Sequence[int]) -> None:
        """Bring the local state of `partitions` up to date before processing them.

        1. Apply the changelog from the position stored locally (0 with an empty data dir) to its
           true end: totals with a higher applied_offset replace the local ones, dedup groups add
           their entries, the last watermark record wins.
        2. Read usage.limits, usage.duplicates (the partition's own) and usage.dlq (filtered on this
           partition) from the positions in that watermark: whatever an interrupted batch already
           sent is remembered (limit marks per total, receipt and DLQ ids) and not sent again.
        """
        started = time.monotonic()
        self._cache.clear()
        watermarks = {p: self.store.watermark(p) for p in partitions}
        local = WriteBatch(raw_mode=True)
        totals: dict[str, StoredTotal] = {}
        # a partition's changelog records live in changelog partition p % N (N: the state's
        # partition count; partitions added to usage.events since keep only a watermark there,
        # under their own key): read each changelog partition once, from the lowest position needed
        starts: dict[int, int] = {}
        for p in partitions:
            home = self._changelog_partition(p)
            starts[home] = min(starts.get(home, watermarks[p].changelog), watermarks[p].changelog)
        changelog = read_tails(
            self.client_config,
            [(self.changelog_topic, home, start) for home, start in sorted(starts.items())],
            idle_s=self.recovery_idle_s,
        )
        applied = 0
        for (_topic, home), home_records in changelog.items():
            for partition in [p for p in partitions if self._changelog_partition(p) == home]:
                applied += self._apply_changelog(partition, home_records, watermarks, totals, local)
        outputs = read_tails(
            self.client_config,
            [(self.topics.limits, p, watermarks[p].limits) for p in partitions if p < self.partitions]
            + [
                (self.topics.duplicates, p, watermarks[p].duplicates)
                for p in partitions
                if p < self.partitions
            ]
            + ([(self.topics.dlq, 0, min(watermarks[p].dlq for p in partitions))] if partitions else []),
            idle_s=self.recovery_idle_s,
        )
        resent = 0
        for (topic, partition), records in outputs.items():
            for _key, value, offset in records:
                if value is None:
                    continue
                if topic == self.topics.limits:
                    event = self._limit_codec.decode(value)
                    if event.meter is None:
                        continue
                    name = aggregate_key(event.customer_id, event.meter, event.period_start)
                    marks = watermarks[partition].marks.setdefault(name, [])
                    found = mark(event.feature, event.kind, event.threshold)
                    if found not in marks:
                        marks.append(found)
                    watermarks[partition].limits = offset + 1
                    resent += 1
                elif topic == self.topics.duplicates:
                    receipt = self._receipt_codec.decode(value)
                    source = receipt.duplicate
                    _guard(watermarks[partition], f"dup:{source.partition}:{source.offset}")
                    watermarks[partition].duplicates = offset + 1
                else:
                    dead = self._dead_codec.decode(value)
                    source = dead.source
                    if source.topic == self.topics.events and source.partition in watermarks:
                        _guard(watermarks[source.partition], f"dlq:{source.partition}:{source.offset}")
                        if offset + 1 > watermarks[source.partition].dlq:
                            watermarks[source.partition].dlq = offset + 1
        for partition, watermark in watermarks.items():
            local.put(WATERMARK + str(partition).encode(), watermark.encode())
        self.store.write(local)
        self.watermarks.update(watermarks)
        log.info(
            "recovered partitions %s in %.2fs: %d changelog records, %d limit events already sent",
            list(partitions),
            time.monotonic() - started,
            applied,
            resent,
        )

    def _changelog_partition(self, partition: int) -> int:
        """Where a partition's changelog records go: its own changelog partition, or, for a partition
        added to usage.events after the state was built, p % N (it only ever writes a watermark)."""
        return partition if partition < self.partitions else partition % self.partitions

    def _watermark_key(self, partition: int) -> bytes:
        if partition < self.partitions:
            return CHANGELOG_WATERMARK_KEY
        return CHANGELOG_WATERMARK_KEY + str(partition).encode()

    def _apply_changelog(
        self,
        partition: int,
        records: Sequence[tuple[bytes | None, bytes | None, int]],
        watermarks: dict[int, Watermark],
        totals: dict[str, StoredTotal],
        local: WriteBatch,
    ) -> int:
        """Apply the changelog records of `partition` from its stored position (recovery step 1)."""
        watermark = watermarks[partition]
        start = watermark.changelog
        own_key = self._watermark_key(partition)
        holds_state = partition < self.partitions
        applied = 0
        for key, value, offset in records:
            if offset < start:
                continue
            applied += 1
            watermark.changelog = offset + 1
            if value is None or key is None:
                continue
            if key == own_key:
                stored = Watermark.decode(value)
                if stored.input >= watermark.input:
                    stored.changelog = watermark.changelog
                    watermark = watermarks[partition] = stored
            elif not holds_state or key.startswith(CHANGELOG_WATERMARK_KEY):
                continue  # another partition's watermark
            elif key.startswith(AGGREGATE):
                name = key[len(AGGREGATE) :].decode()
                incoming = StoredTotal.decode(value)
                current = totals.get(name) or self.store.aggregate(name)
                if current is None or incoming.total.applied_offset >= current.total.applied_offset:
                    totals[name] = incoming
                    local.put(key, value)
            elif key.startswith(CHANGELOG_DEDUP_PREFIX):
                for customer, event_id, seen in decode_dedup_group(value):
                    local.put(dedup_key(customer, event_id), encode_seen(seen))
        return applied


def read_tails(
    client_config: Mapping[str, Any],
    assignments: Sequence[tuple[str, int, int]],
    *,
    idle_s: float,
    timeout_s: float = 120.0,
) -> dict[tuple[str, int], list[tuple[bytes | None, bytes | None, int]]]:
    """Read each (topic, partition) from an offset to its TRUE end.

    The end is where the broker's reported end offset has been reached AND no record arrived for
    `idle_s`: the embedded broker reports a short end (base offset of the newest batch + 1), so
    trusting it alone would drop the tail of a changelog. On Apache Kafka this only adds `idle_s`.
    """
    found: dict[tuple[str, int], list[tuple[bytes | None, bytes | None, int]]] = {
        (topic, partition): [] for topic, partition, _ in assignments
    }
    if not assignments:
        return found
    consumer = _reader(client_config, "recovery")
    try:
        ends: dict[tuple[str, int], int] = {}
        positions: dict[tuple[str, int], int] = {}
        for topic, partition, start in assignments:
            _, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10, cached=False
            )
            ends[(topic, partition)] = high
            positions[(topic, partition)] = start
        consumer.assign([TopicPartition(topic, partition, start) for topic, partition, start in assignments])
        deadline = time.monotonic() + timeout_s
        last_seen = time.monotonic()
        while time.monotonic() < deadline:
            messages = consumer.consume(5000, timeout=0.05)
            for message in messages:
                if message.error():
                    continue
                tp = (str(message.topic()), int(message.partition() or 0))
                offset = int(message.offset() or 0)
                found[tp].append((message.key(), message.value(), offset))
                positions[tp] = offset + 1
            if messages:
                last_seen = time.monotonic()
                continue
            caught_up = all(positions[tp] >= end for tp, end in ends.items())
            if caught_up and time.monotonic() - last_seen >= idle_s:
                return found
        raise TimeoutError(f"could not read {sorted(ends)} to their end within {timeout_s}s")
    finally:
        consumer.close()


def _reader(client_config: Mapping[str, Any], purpose: str) -> Consumer:
    """A consumer outside the group, for reads by assignment (recovery, the position rule)."""
    return Consumer(
        {
            **client_config,
            "group.id": f"metering-{purpose}-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 50,
        }
    )


def first_offset_from(
    client_config: Mapping[str, Any], topic: str, partition: int, offset: int, timeout_s: float = 10.0
) -> int | None:
    """The offset of the first record `topic`/`partition` holds at or after `offset` (None: none
    arrived within `timeout_s`)."""
    consumer = _reader(client_config, "position")
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = consumer.poll(0.1)
            if message is not None and not message.error():
                return int(message.offset() or 0)
        return None
    finally:
        consumer.close()


def _guard(watermark: Watermark, guard: str) -> None:
    if guard not in watermark.guards:
        watermark.guards.append(guard)


def _published(aggregate: StoredTotal, now_ms: int) -> bytes:
    total = aggregate.total
    return write_aggregate(
        customer_id=aggregate.customer_id,
        meter=aggregate.meter,
        aggregation=total.aggregation.value,
        period_start_ms=aggregate.period_start_ms,
        period_end_ms=aggregate.period_end_ms,
        value=total.value,
        event_count=total.event_count,
        version=total.version,
        last_event_ms=total.last_event_ms,
        last_event_id=total.last_event_id,
        late=total.late,
        subscription_id=aggregate.subscription_id,
        plan_key=aggregate.plan_key,
        plan_version=aggregate.plan_version,
        updated_at_ms=now_ms,
    )


def _millis(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _from_millis(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC).replace(microsecond=(value % 1000) * 1000)


__all__ = ["BatchOutcome", "MeteringProcessor", "read_tails"]
