"""Recovery: bring a partition's local state up to date before metering it (see commit.py for
what each crash leaves behind). Topics are read to their true end by metergate.kafka.follow's
`read_partitions`; `first_offset_from` is the broker read the position rule needs.

1. Apply the changelog from the position stored locally (0 with an empty data dir) to its true
   end: totals with a higher applied_offset replace the local ones, dedup groups add their
   entries, the watermark with the highest input position wins (a stale one, e.g. sent late by a
   worker paused past its session, changes nothing).
2. Read usage.limits, usage.duplicates (the partition's own) and usage.dlq (filtered on this
   partition) from the positions in that watermark: whatever an interrupted batch already sent is
   remembered (limit marks per total, receipt and DLQ ids) and not sent again.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition
from rocksdict import WriteBatch

from metergate.domain.limits import mark
from metergate.domain.records import DeadLetter, DuplicateReceipt, LimitEvent, aggregate_key
from metergate.kafka.follow import Record, read_partitions
from metergate.kafka.topics import Topics
from metergate.wire.codec import codec
from metergate_services.metering.commit import CHANGELOG_DEDUP_PREFIX, CHANGELOG_WATERMARK_KEY, Layout
from metergate_services.metering.store import (
    AGGREGATE,
    WATERMARK,
    StateStore,
    Watermark,
    decode_dedup_group,
    dedup_key,
    encode_seen,
)

log = logging.getLogger(__name__)

Tail = list[Record]


def recover(
    partitions: Sequence[int],
    *,
    store: StateStore,
    layout: Layout,
    topics: Topics,
    changelog_topic: str,
    client_config: Mapping[str, Any],
    idle_s: float,
) -> dict[int, Watermark]:
    """Recover `partitions` (steps 1 and 2 above); returns their watermarks, also written locally."""
    started = time.monotonic()
    watermarks = {p: store.watermark(p) for p in partitions}
    local = WriteBatch(raw_mode=True)
    totals: dict[str, int] = {}  # aggregate key -> applied_offset of the total kept
    # a partition's changelog records live in changelog partition p % N (Layout): read each
    # changelog partition once, from the lowest position needed
    starts: dict[int, int] = {}
    for p in partitions:
        home = layout.changelog_partition(p)
        starts[home] = min(starts.get(home, watermarks[p].changelog), watermarks[p].changelog)
    own = [p for p in partitions if p < layout.partitions]

    def output_tails(marks: dict[int, Watermark]) -> list[tuple[str, int, int]]:
        return (
            [(topics.limits, p, marks[p].limits) for p in own]
            + [(topics.duplicates, p, marks[p].duplicates) for p in own]
            + ([(topics.dlq, 0, min(marks[p].dlq for p in partitions))] if partitions else [])
        )

    changelog_tails = [(changelog_topic, home, start) for home, start in sorted(starts.items())]
    # With a local state, the output topics are read in the same pass as the changelog, from the
    # local watermark's positions (at or before the changelog's newest: reading from there finds
    # everything an interrupted batch sent, and what it finds in addition only repeats marks and
    # ids already committed). With none (a new or wiped data dir), they are read from the
    # positions the changelog gives, after it: reading them from 0 could be long.
    together = all(watermarks[p].input >= 0 for p in partitions)
    read = read_partitions(
        client_config,
        changelog_tails + (output_tails(watermarks) if together else []),
        idle_s=idle_s,
        name="metering-recovery",
    )
    changelog = {tp: records for tp, records in read.items() if tp[0] == changelog_topic}
    applied = 0
    for (_topic, home), home_records in changelog.items():
        for partition in [p for p in partitions if layout.changelog_partition(p) == home]:
            applied += _apply_changelog(partition, home_records, watermarks, totals, local, store, layout)
    if together:
        outputs = {tp: records for tp, records in read.items() if tp[0] != changelog_topic}
    else:
        outputs = read_partitions(
            client_config, output_tails(watermarks), idle_s=idle_s, name="metering-recovery"
        )
    limit_codec, receipt_codec, dead_codec = codec(LimitEvent), codec(DuplicateReceipt), codec(DeadLetter)
    resent = 0
    for (topic, partition), records in outputs.items():
        for _key, value, offset in records:
            if value is None:
                continue
            if topic == topics.limits:
                event = limit_codec.decode(value)
                if event.meter is None:
                    continue
                name = aggregate_key(event.customer_id, event.meter, event.period_start)
                marks = watermarks[partition].marks.setdefault(name, [])
                found = mark(event.feature, event.kind, event.threshold)
                if found not in marks:
                    marks.append(found)
                watermarks[partition].limits = offset + 1
                resent += 1
            elif topic == topics.duplicates:
                source = receipt_codec.decode(value).duplicate
                _guard(watermarks[partition], f"dup:{source.partition}:{source.offset}")
                watermarks[partition].duplicates = offset + 1
            else:
                source = dead_codec.decode(value).source
                if source.topic == topics.events and source.partition in watermarks:
                    _guard(watermarks[source.partition], f"dlq:{source.partition}:{source.offset}")
                    if offset + 1 > watermarks[source.partition].dlq:
                        watermarks[source.partition].dlq = offset + 1
    for partition, watermark in watermarks.items():
        local.put(WATERMARK + str(partition).encode(), watermark.encode())
    store.write(local)
    if applied:
        # start a memtable flush now: a restart after a SIGKILL would otherwise replay this whole
        # write (a wiped data dir rebuilt from the changelog: ~1 s to open the state) from the WAL
        store.db.flush(False)
    log.info(
        "recovered partitions %s in %.2fs: %d changelog records, %d limit events already sent",
        list(partitions),
        time.monotonic() - started,
        applied,
        resent,
    )
    return watermarks


def _apply_changelog(
    partition: int,
    records: Tail,
    watermarks: dict[int, Watermark],
    totals: dict[str, int],
    local: WriteBatch,
    store: StateStore,
    layout: Layout,
) -> int:
    """Apply the changelog records of `partition` from its stored position (step 1)."""
    watermark = watermarks[partition]
    start = watermark.changelog
    own_key = layout.watermark_key(partition)
    holds_state = partition < layout.partitions
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
            # a key has one changelog record per batch that touched it: read only its applied
            # offset (the record is stored as it is), the full total is decoded when it is used
            name = key[len(AGGREGATE) :].decode()
            incoming = _applied_offset(value)
            current = totals.get(name)
            if current is None:
                stored = store.aggregate(name)
                current = -1 if stored is None else stored.total.applied_offset
            if incoming >= current:
                totals[name] = incoming
                local.put(key, value)
        elif key.startswith(CHANGELOG_DEDUP_PREFIX):
            for customer, event_id, seen in decode_dedup_group(value):
                local.put(dedup_key(customer, event_id), encode_seen(seen))
    return applied


def _applied_offset(raw: bytes) -> int:
    """The `applied_offset` of a total as stored (store.encode_total: the RunningTotal state, "o")."""
    return int(orjson.loads(raw)["o"])


def reader(client_config: Mapping[str, Any], purpose: str) -> Consumer:
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
    consumer = reader(client_config, "position")
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


__all__ = ["first_offset_from", "reader", "recover"]
