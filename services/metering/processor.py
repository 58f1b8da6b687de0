"""The metering step: one batch of usage.events records in, counted usage and signals out.

It runs in one worker thread (the Faust agent hands it batches); it does no Faust and no asyncio.

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

THE RULES of each record (accepted, duplicate, rejected, forwarded) are metergate.domain.metering's
`MeteringCore.meter_batch`; how its effects become durable (the COMMIT ORDER, steps 1-4, and what a
crash between two steps does) is commit.py; recovery after a crash or a rebalance is recovery.py.
This module is the shell around them: the position rule, decoding, the state the rules read,
metrics.

ACCOUNTING: every input offset up to the watermark is exactly one of accepted, duplicate, rejected,
forwarded (or a gap of the log), kept in the partition's watermark with the state (store.py), so
`input + 1 == accepted + duplicates + rejected + forwarded + gaps` holds durably, across crashes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer

from metergate.domain.aggregation import PeriodTotal
from metergate.domain.dedup import FirstSeen
from metergate.domain.metering import (
    ACCEPTED,
    DUPLICATE,
    FORWARDED,
    REJECTED,
    BatchEffects,
    Consumed,
    Decoded,
    MeteringCore,
    MeteringRules,
)
from metergate.domain.records import EntitlementSnapshot, MeterDefinition
from metergate.domain.usage import Rejection
from metergate.errors import DecodeError
from metergate.kafka.topics import Topics
from metergate.wire.fastwire import read_event
from metergate_services.metering import metrics
from metergate_services.metering.commit import BatchCommit, Layout
from metergate_services.metering.recovery import first_offset_from, recover
from metergate_services.metering.store import StateStore, Watermark, decode_seen, dedup_key

log = logging.getLogger(__name__)

LATENCY_SAMPLES = 256

#: a consumed record, as the Faust transport hands it (aiokafka's ConsumerRecord)
KafkaRecord = Consumed


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


class _Catalog:
    """The catalog as the rules read it: an unknown meter re-reads a stale catalog once."""

    def __init__(
        self,
        meters: Callable[[str], MeterDefinition | None],
        snapshots: Callable[[str, int], EntitlementSnapshot | None],
        refresh: Callable[[], bool],
    ) -> None:
        self._meters = meters
        self.snapshot = snapshots
        self._refresh = refresh

    def meter(self, name: str) -> MeterDefinition | None:
        found = self._meters(name)
        if found is None and self._refresh():
            found = self._meters(name)
        return found


class MeteringProcessor:
    def __init__(
        self,
        *,
        topics: Topics,
        changelog_topic: str,
        store: StateStore,
        meters: Callable[[str], MeterDefinition | None],
        snapshots: Callable[[str, int], EntitlementSnapshot | None],
        refresh_catalog: Callable[[], bool],
        producer: Producer,
        client_config: Mapping[str, Any],
        partitions: int,
        dedup_window_ms: int,
        future_skew_ms: int,
        late_grace_ms: int,
        recovery_idle_s: float = 0.3,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        fault: str | None = None,
    ) -> None:
        self.topics = topics
        self.changelog_topic = changelog_topic
        self.store = store
        self.producer = producer
        self.client_config = dict(client_config)
        self.layout = Layout(partitions)
        self.core = MeteringCore(
            MeteringRules(
                partitions=partitions,
                dedup_window_ms=dedup_window_ms,
                future_skew_ms=future_skew_ms,
                late_grace_ms=late_grace_ms,
                events_topic=topics.events,
            ),
            _Catalog(meters, snapshots, refresh_catalog),
        )
        self.committer = BatchCommit(
            topics=topics,
            changelog_topic=changelog_topic,
            store=store,
            producer=producer,
            layout=self.layout,
            fault=fault,
        )
        self.window_ms = dedup_window_ms
        self.grace_ms = late_grace_ms
        self.recovery_idle_s = recovery_idle_s
        self.clock_ms = clock_ms
        #: (partition, offset) -> first offset the log holds at or after it (position rule)
        self._log_holds: dict[tuple[int, int], int] = {}
        self.watermarks: dict[int, Watermark] = {}
        self._revoked: set[int] = set()
        #: committed totals kept between batches (they are changed in place by a batch; a batch that
        #: fails clears the cache, see `process`)
        self._cache: dict[str, PeriodTotal] = {}

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

    # -- the state the rules read (metergate.domain.metering.MeteringState) -------------------------
    def first_seen_many(self, ids: Sequence[tuple[str, str]]) -> list[FirstSeen | None]:
        found = self.store.seen_many([dedup_key(customer, event_id) for customer, event_id in ids])
        return [None if raw is None else decode_seen(raw) for raw in found]

    def total(self, key: str) -> PeriodTotal | None:
        return self._cache.get(key) or self.store.aggregate(key)

    def sent_marks(self, partition: int, key: str) -> Iterable[str]:
        return self.watermarks[partition].marks.get(key, ())

    # -- the batch ----------------------------------------------------------------------------------
    def process(
        self, batches: Sequence[tuple[int, Sequence[KafkaRecord]]], assigned: Iterable[int] = ()
    ) -> BatchOutcome:
        self._apply_revocations()
        missing = {p for p, _ in batches if p not in self.watermarks} | {
            p for p in assigned if p not in self.watermarks
        }
        if missing:
            self._recover(sorted(missing))
        now_ms = self.clock_ms()
        try:
            runs, skipped_to, reseek, gaps = self._positions(batches)
            fx = self.core.meter_batch(runs, self, now_ms)
            sent_at = self.committer.run(fx, self.watermarks, gaps)
        except BaseException:
            # in-memory state may hold this batch's uncommitted effects: forget it all, so the next
            # attempt starts from durable state (recovery runs again)
            self._cache.clear()
            self.watermarks.clear()
            raise
        if len(self._cache) > 500_000:
            self._cache.clear()
        for key, (_partition, found) in fx.totals.items():
            self._cache[key] = found
        self._observe(fx, gaps)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("batch done in %d ms", self.clock_ms() - now_ms)
        return BatchOutcome(
            committed={p: self.watermarks[p].input for p in {*fx.last_offset, *skipped_to}},
            consumed=sum(sum(counts) for counts in fx.outcomes.values()),
            accepted=fx.count(ACCEPTED),
            duplicates=fx.count(DUPLICATE),
            rejected=fx.count(REJECTED),
            limit_events=len(fx.limit_events),
            forwarded=fx.count(FORWARDED),
            reseek=reseek,
            limit_sent_at=sent_at,
        )

    def _recover(self, partitions: Sequence[int]) -> None:
        self._cache.clear()
        self.watermarks.update(
            recover(
                partitions,
                store=self.store,
                layout=self.layout,
                topics=self.topics,
                changelog_topic=self.changelog_topic,
                client_config=self.client_config,
                idle_s=self.recovery_idle_s,
            )
        )

    def _positions(
        self, batches: Sequence[tuple[int, Sequence[KafkaRecord]]]
    ) -> tuple[list[tuple[int, list[Decoded]]], dict[int, int], dict[int, int], dict[int, int]]:
        """The position rule (module docstring): the decoded runs to apply, the partitions whose
        re-read records only let the group offset catch up, those to re-seek, the gaps confirmed."""
        runs: list[tuple[int, list[Decoded]]] = []
        skipped_to: dict[int, int] = {}
        reseek: dict[int, int] = {}
        gaps: dict[int, int] = {}
        next_offset: dict[int, int] = {}
        for partition, records in batches:
            expected = next_offset.get(partition, self.watermarks[partition].input + 1)
            fresh = [record for record in records if record.offset >= expected]
            if len(fresh) < len(records) and partition not in next_offset:
                # re-read records already durable (a crash after step 3, before step 4): nothing to
                # do but let the group offset catch up with the stored watermark
                skipped_to[partition] = self.watermarks[partition].input
            if not fresh:
                continue
            if fresh[0].offset != expected:
                if self._log_holds_from(partition, expected) != fresh[0].offset:
                    # a record between the position and this run exists: the run is not the next one
                    log.warning(
                        "partition %d: run starts at offset %d, the partition stands at %d: re-seeking",
                        partition,
                        fresh[0].offset,
                        expected,
                    )
                    reseek[partition] = expected
                    continue
                gaps[partition] = gaps.get(partition, 0) + fresh[0].offset - expected
            reseek.pop(partition, None)
            next_offset[partition] = fresh[-1].offset + 1
            runs.append((partition, [(record, _decode(record)) for record in fresh]))
        return runs, skipped_to, reseek, gaps

    def _log_holds_from(self, partition: int, offset: int) -> int | None:
        """The first offset at or after `offset` that partition's log holds, read from the broker
        (offsets never change, so an answer is kept)."""
        found = self._log_holds.get((partition, offset))
        if found is None:
            found = first_offset_from(self.client_config, self.topics.events, partition, offset)
            if found is not None:
                self._log_holds[(partition, offset)] = found
        return found

    def _observe(self, fx: BatchEffects, gaps: Mapping[int, int]) -> None:
        metrics.EVENTS_CONSUMED.inc(sum(sum(counts) for counts in fx.outcomes.values()))
        metrics.EVENTS_ACCEPTED.inc(fx.count(ACCEPTED))
        metrics.EVENTS_DUPLICATE.inc(fx.count(DUPLICATE))
        metrics.EVENTS_FORWARDED.inc(fx.count(FORWARDED))
        for partition, count in gaps.items():
            metrics.OFFSET_GAPS.labels(str(partition)).inc(count)
        for partition in fx.last_offset:
            watermark = self.watermarks[partition]
            metrics.ACCOUNTED.labels(str(partition), "accepted").set(watermark.accepted)
            metrics.ACCOUNTED.labels(str(partition), "duplicate").set(watermark.duplicates_counted)
            metrics.ACCOUNTED.labels(str(partition), "rejected").set(watermark.rejected)
            metrics.ACCOUNTED.labels(str(partition), "forwarded").set(watermark.forwarded)
            metrics.ACCOUNTED.labels(str(partition), "gap").set(watermark.gaps)
            metrics.ACCOUNTED.labels(str(partition), "input").set(watermark.input + 1)
        for reason, count in fx.rejected_by_reason.items():
            metrics.EVENTS_REJECTED.labels(reason).inc(count)
        for kind, count in fx.limit_kinds.items():
            metrics.LIMIT_EVENTS.labels(kind).inc(count)
        done_s = time.time()
        # a sample of at most LATENCY_SAMPLES records per batch, evenly spread (one observation
        # per record cost ~1 µs per event, a few percent of the worker's time)
        step = max(1, len(fx.latencies_from_ms) // LATENCY_SAMPLES)
        for from_ms in fx.latencies_from_ms[::step]:
            metrics.PROCESSING_LATENCY.observe(max(0.0, done_s - from_ms / 1000))


def _decode(record: KafkaRecord) -> dict[str, Any] | Rejection:
    try:
        return read_event(record.value)
    except DecodeError as exc:
        return Rejection(exc.reason, exc.message)


__all__ = ["BatchOutcome", "MeteringProcessor"]
