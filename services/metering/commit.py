"""The commit order of a metering batch: how the effects of `MeteringCore.meter_batch` become durable.

COMMIT ORDER, and what a crash between two steps does
-------------------------------------------------------
0. (processor.py) Compute in memory: the batch's effects (metergate.domain.metering): forwards,
   dead letters, duplicate receipts, limit events due (not in the total's `emitted` marks), touched
   totals, dedup entries, outcome counts.
1. `BatchCommit.run`: send the outputs: forwards, DLQ records, duplicate receipts, limit events
   (each to the partition of the input partition, so recovery knows where to look), then one
   UsageAggregate per touched key, whose version is 1 + the offset of the last event folded in.
   FLUSH and check every delivery.
   Crash during 1: some outputs are out, no state is. The restart reprocesses the batch: totals
   come out the same (same fold; a version names the last event folded in, so a re-sent aggregate
   repeats its version with the same value, and consumers keep the highest version per key). Limit
   events, receipts and DLQ records are NOT re-sent: recovery (recovery.py) reads usage.limits /
   usage.duplicates / usage.dlq from the offsets stored with the last committed batch and
   suppresses what is already there (limit marks; receipt and DLQ ids).
2. Append the new state to the changelog topic (partition = input partition): one record per
   touched total (carrying its applied_offset, version and emitted marks), one record per 5,000 of
   the batch's new dedup entries, and the partition watermark (input offset, output positions,
   accounting). FLUSH.
   Crash during 2: the changelog may hold part of the batch. With the data dir intact, the local
   state is the previous batch's and recovery applies the changelog tail: totals in it are newer and
   carry their applied_offset, so their events are not folded twice; dedup entries carry the offset
   of their first copy, so a re-read first copy is a REPLAY, not a duplicate. Same with a wiped data
   dir, from changelog offset 0. Limit events in the changelog's marks were all delivered in step 1.
3. Write the same state to the local RocksDB in one WriteBatch (atomic), with the changelog position.
   Crash before 3: as in 2 (the changelog is the source of truth; local state is a checkpoint of it).
4. `GroupOffsets`: the agent commits the consumer-group offsets (input watermark + 1), only ever
   what step 3 made durable, and only for partitions it still owns. Crash before 4: the group
   offset lags; records at or below the stored input watermark are skipped on re-read.

Fault injection (tests of this order, metergate.faults): `METERGATE_METERING_FAULT=STEP@N`, STEP one
of `CRASH_POINTS`: the worker SIGKILLs itself at that step of batch N (`outputs_partial`: once half of
the batch's limit events are delivered, or half of its aggregates in a batch without limit events;
`changelog_partial`: half of its totals written to the changelog).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from confluent_kafka import Producer
from rocksdict import WriteBatch

from metergate.domain.aggregation import PeriodTotal
from metergate.domain.metering import ACCEPTED, DUPLICATE, FORWARDED, REJECTED, BatchEffects
from metergate.domain.records import DeadLetter, DuplicateReceipt, LimitEvent
from metergate.faults import Fault
from metergate.kafka.producer import DeliveryTracker, flush, produce
from metergate.kafka.topics import Topics
from metergate.wire.codec import codec
from metergate.wire.fastwire import with_segments, write_aggregate
from metergate_services.metering.store import (
    AGGREGATE,
    WATERMARK,
    StateStore,
    Watermark,
    dedup_key,
    encode_dedup_group,
    encode_seen,
    encode_total,
)

log = logging.getLogger(__name__)

CHANGELOG_WATERMARK_KEY = b"w"
CHANGELOG_DEDUP_PREFIX = b"d\x00"
DEDUP_GROUP = 5000
FORWARDED_FROM = "metergate-forwarded-from"
CRASH_POINTS = ("outputs_partial", "outputs_sent", "changelog_partial", "changelog_sent", "state_written")


def dead_letter_guard(dead: DeadLetter) -> str:
    return f"dlq:{dead.source.partition}:{dead.source.offset}"


def receipt_guard(receipt: DuplicateReceipt) -> str:
    return f"dup:{receipt.duplicate.partition}:{receipt.duplicate.offset}"


class Layout:
    """Where a partition's state lives in the changelog: its own changelog partition, or, for a
    partition added to usage.events after the state was built, p % N under its own watermark key
    (it only ever writes a watermark)."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions

    def changelog_partition(self, partition: int) -> int:
        return partition if partition < self.partitions else partition % self.partitions

    def watermark_key(self, partition: int) -> bytes:
        if partition < self.partitions:
            return CHANGELOG_WATERMARK_KEY
        return CHANGELOG_WATERMARK_KEY + str(partition).encode()


class BatchCommit:
    """Steps 1-3 of the commit order, for one worker (one producer, one store)."""

    def __init__(
        self,
        *,
        topics: Topics,
        changelog_topic: str,
        store: StateStore,
        producer: Producer,
        layout: Layout,
        fault: str | None = None,
    ) -> None:
        self.topics = topics
        self.changelog_topic = changelog_topic
        self.store = store
        self.producer = producer
        self.layout = layout
        self.fault = Fault("METERGATE_METERING_FAULT", CRASH_POINTS, fault)
        self._all_topics = (
            topics.events,
            topics.dlq,
            topics.duplicates,
            topics.limits,
            topics.aggregates,
            changelog_topic,
        )
        self.batches_done = 0
        self._limit_codec = codec(LimitEvent)
        self._receipt_codec = codec(DuplicateReceipt)
        self._dead_codec = codec(DeadLetter)

    def run(
        self, fx: BatchEffects, watermarks: dict[int, Watermark], gaps: Mapping[int, int]
    ) -> list[tuple[int, float]]:
        """Make `fx` durable; update `watermarks` (the in-memory ones) once step 3 is done.
        Returns (kafka timestamp of the crossing record, delivered at) per limit event sent."""
        outputs = DeliveryTracker()  # positions of limits, duplicates, dlq: where recovery looks
        topics = self.topics

        send = self._send
        flush = self._flush
        # step 1: outputs
        for forward in fx.forwards:
            origin = f"{forward.partition}:{forward.record.offset}".encode()
            send(
                topics.events,
                forward.customer_id.encode(),
                forward.record.value,
                forward.to,
                outputs,
                [(FORWARDED_FROM, origin)],
            )
        for partition, dead in fx.dead_letters:
            if dead_letter_guard(dead) in watermarks[partition].guards:
                continue
            send(topics.dlq, dead.original_key or None, self._dead_codec.encode(dead), None, outputs)
        for partition, receipt in fx.receipts:
            if receipt_guard(receipt) in watermarks[partition].guards:
                continue
            send(
                topics.duplicates,
                receipt.customer_id.encode(),
                self._receipt_codec.encode(receipt),
                partition,
                outputs,
            )
        limit_timestamps: list[int | None] = []
        for index, (partition, event, event_ts) in enumerate(fx.limit_events):
            send(
                topics.limits,
                event.customer_id.encode(),
                self._limit_codec.encode(event),
                partition,
                outputs,
            )
            limit_timestamps.append(event_ts)
            if index == len(fx.limit_events) // 2 and self.fault.step == "outputs_partial":
                flush(outputs)
                self._maybe_crash("outputs_partial")  # half the limit events out
        for index, (key, (_partition, found)) in enumerate(fx.totals.items()):
            if index == len(fx.totals) // 2 and not fx.limit_events and self.fault.step == "outputs_partial":
                flush(outputs)
                self._maybe_crash("outputs_partial")  # a batch without limit events: half its aggregates out
            # version = 1 + offset of the last event folded in: strictly increasing per key (a key's
            # events all live in one partition), and the same version always means the same events,
            # whatever batch boundaries a replay after a crash happens to have (a counter per
            # publication would give one version two different values)
            found.total.version = found.total.applied_offset + 1
            send(topics.aggregates, key.encode(), _published(found, fx.now_ms), None, outputs)
        flush(outputs)
        self._maybe_crash("outputs_sent")
        delivered_s = time.time()
        sent_at = [(ts, delivered_s) for ts in limit_timestamps if ts is not None]

        # step 2: changelog (partition = input partition)
        positions = outputs.positions
        new_watermarks: dict[int, Watermark] = {}
        for partition, last in fx.last_offset.items():
            old = watermarks[partition]
            written = {key for key, (p, _) in fx.totals.items() if p == partition}
            outcomes = fx.outcomes[partition]
            new_watermarks[partition] = Watermark(
                marks={key: marks for key, marks in old.marks.items() if key not in written},
                guards=[guard for guard in old.guards if int(guard.rsplit(":", 1)[1]) > last],
                input=last,
                changelog=old.changelog,
                limits=positions.get((topics.limits, partition), old.limits - 1) + 1,
                duplicates=positions.get((topics.duplicates, partition), old.duplicates - 1) + 1,
                dlq=positions.get((topics.dlq, 0), old.dlq - 1) + 1
                if any(p == partition for p, _ in fx.dead_letters)
                else old.dlq,
                accepted=old.accepted + outcomes[ACCEPTED],
                duplicates_counted=old.duplicates_counted + outcomes[DUPLICATE],
                rejected=old.rejected + outcomes[REJECTED],
                forwarded=old.forwarded + outcomes[FORWARDED],
                gaps=old.gaps + gaps.get(partition, 0),
            )
        changelog = DeliveryTracker()

        local = WriteBatch(raw_mode=True)
        for index, (key, (partition, found)) in enumerate(fx.totals.items()):
            encoded = encode_total(found)
            send(self.changelog_topic, AGGREGATE + key.encode(), encoded, partition, changelog)
            local.put(AGGREGATE + key.encode(), encoded)
            if index == len(fx.totals) // 2 and self.fault.step == "changelog_partial":
                flush(changelog)
                self._maybe_crash("changelog_partial")
        for partition, entries in fx.new_seen.items():
            # one changelog record per DEDUP_GROUP entries (a record must stay well below the
            # broker's message size limit; 5,000 entries are ~0.3 MB)
            for start in range(0, len(entries), DEDUP_GROUP):
                group = entries[start : start + DEDUP_GROUP]
                send(
                    self.changelog_topic,
                    CHANGELOG_DEDUP_PREFIX + str(group[0][2].offset).encode(),
                    encode_dedup_group(group),
                    partition,
                    changelog,
                )
            for customer, event_id, seen in entries:
                local.put(dedup_key(customer, event_id), encode_seen(seen))
        layout = self.layout
        for partition, watermark in new_watermarks.items():
            send(
                self.changelog_topic,
                layout.watermark_key(partition),
                watermark.encode(),
                layout.changelog_partition(partition),
                changelog,
            )
        flush(changelog)
        self._maybe_crash("changelog_sent")

        # step 3: local checkpoint, one atomic write
        for partition, watermark in new_watermarks.items():
            home = layout.changelog_partition(partition)
            watermark.changelog = (
                changelog.positions.get((self.changelog_topic, home), watermark.changelog - 1) + 1
            )
            local.put(WATERMARK + str(partition).encode(), watermark.encode())
        self.store.write(local)
        watermarks.update(new_watermarks)
        self._maybe_crash("state_written")
        self.batches_done += 1
        return sent_at

    def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        tracker: DeliveryTracker,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        produce(self.producer, topic, key, value, tracker, partition=partition, headers=headers)

    def _flush(self, tracker: DeliveryTracker) -> None:
        flush(self.producer, tracker, topic=self._all_topics, timeout_s=60)

    def _maybe_crash(self, point: str) -> None:
        self.fault.at(point, self.batches_done + 1)


class GroupOffsets:
    """Step 4: the consumer-group offsets follow the durable input watermarks of owned partitions.

    A commit is awaited only when the worker's queue is empty or every `interval_s`: a broker round
    trip per batch would add to every event's latency while the worker is catching up, and a
    lagging group offset only means re-reading records the stored watermark skips. (A commit left
    running in a task of its own stalled for good in tests.)"""

    def __init__(self, topic: str, interval_s: float = 0.5) -> None:
        self.topic = topic
        self.interval_s = interval_s
        self.pending: dict[int, int] = {}  # partition -> next offset to read
        self._last = 0.0

    def durable(self, committed: Mapping[int, int], owned: Collection[int]) -> None:
        """Partitions' highest durable input offsets (step 3 done)."""
        self.pending.update({p: offset + 1 for p, offset in committed.items() if p in owned})

    def forget(self, partitions: Collection[int]) -> None:
        """Revoked partitions: their pending commits are dropped (the next owner skips what the
        stored watermark covers)."""
        for partition in [p for p in self.pending if p in partitions]:
            del self.pending[partition]

    async def commit(
        self,
        send: Callable[[dict[int, int]], Awaitable[Any]],
        owned: Collection[int],
        *,
        idle: bool,
        now: float,
    ) -> None:
        if not self.pending or not (idle or now - self._last >= self.interval_s):
            return
        offsets = {p: o for p, o in self.pending.items() if p in owned}
        self.pending.clear()
        if offsets:
            await send(offsets)
        self._last = now


def _published(found: PeriodTotal, now_ms: int) -> bytes:
    total = found.total
    record = write_aggregate(
        customer_id=found.customer_id,
        meter=found.meter,
        aggregation=total.aggregation.value,
        period_start_ms=found.period_start_ms,
        period_end_ms=found.period_end_ms,
        value=total.value,
        event_count=total.event_count,
        version=total.version,
        last_event_ms=total.last_event_ms,
        last_event_id=total.last_event_id,
        late=total.late,
        subscription_id=found.subscription_id,
        plan_key=found.plan_key,
        plan_version=found.plan_version,
        updated_at_ms=now_ms,
    )
    if found.segments is None:
        return record  # every event under the total's own terms
    return with_segments(
        record,
        [
            (
                found.period_start_ms if segment.start_ms is None else segment.start_ms,
                segment.subscription_id,
                segment.plan_key,
                segment.plan_version,
                segment.total.value,
                segment.total.event_count,
            )
            for segment in found.segments
        ],
    )


__all__ = ["BatchCommit", "GroupOffsets", "Layout", "dead_letter_guard", "receipt_guard"]
