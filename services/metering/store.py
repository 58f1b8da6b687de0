"""The worker's local state: one RocksDB (rocksdict) per worker, written once per batch.

Keys (the same layout is used in the changelog topic, see README.md):

| local key | value | changelog key |
| --- | --- | --- |
| `a\\0<aggregate key>` | running total + the aggregate's identity and terms segments (JSON) | `a\\0<aggregate key>` |
| `d\\0<len(customer) as 4 bytes><customer><event id>` | first copy: "partition offset event_ms" | grouped: `d\\0<first offset of the batch>` |
| `w\\0<partition>` | watermarks of a partition (JSON) | `w` (in the partition's own changelog partition) |

A partition's watermark `Watermark` says how far everything is durable:
- `input`: highest usage.events offset whose effects are in this state (-1: none);
- `changelog`: next changelog offset not yet applied here (local state only);
- `limits`, `duplicates`, `dlq`: next offset of those topics after the last record a committed
  batch sent there; recovery reads from there on to learn what an interrupted batch already sent;
- `first`, `accepted`, `duplicates_counted`, `rejected`, `forwarded`: the partition's accounting, durable
  with the watermark: every input offset from `first` to `input` is exactly one of those outcomes
  (`input - first + 1 == accepted + duplicates_counted + rejected + forwarded`, `gaps` aside: offsets
  the log does not hold, such as transaction markers);
- `marks`, `guards`: what that reading found (limit marks per total, receipt/DLQ ids), kept in the
  watermark (so durable with every batch) until the totals carry the marks / the input passes them.

Keys are unambiguous whatever the ids hold: the customer id is length-prefixed in a dedup key. The
store records its key format (`f\\0format`); a store of another format is rebuilt from the changelog
(whose records carry ids as JSON values, not inside keys).

The store's directory is owned through an flock on `owner.lock`; a RocksDB `LOCK` left behind by a
SIGKILLed worker (whose flock the kernel released) is removed before opening.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import orjson
from rocksdict import BlockBasedOptions, Options, Rdict, WriteBatch

from metergate.domain.aggregation import PeriodTotal, RunningTotal, SegmentTotal
from metergate.domain.dedup import FirstSeen
from metergate.errors import ConfigurationError

log = logging.getLogger(__name__)

AGGREGATE = b"a\x00"
DEDUP = b"d\x00"
WATERMARK = b"w\x00"
FORMAT_KEY = b"f\x00format"
#: 2: dedup keys length-prefix the customer id (1 joined customer and event id with a NUL, so
#: customer "a" + event "b\0c" and customer "a\0b" + event "c" were one key)
FORMAT = b"2"


@dataclass(slots=True)
class Watermark:
    input: int = -1
    changelog: int = 0
    limits: int = 0
    duplicates: int = 0
    dlq: int = 0
    #: accounting of the input offsets first..input (see the module docstring)
    first: int = -1
    accepted: int = 0
    duplicates_counted: int = 0
    rejected: int = 0
    forwarded: int = 0
    gaps: int = 0
    #: limit events found sent by an interrupted batch, per total, until that total is written with them
    marks: dict[str, list[str]] = field(default_factory=dict)
    #: receipt / DLQ ids found sent by an interrupted batch, until the input watermark passes them
    guards: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        state = asdict(self)
        if not self.marks:
            del state["marks"]
        if not self.guards:
            del state["guards"]
        return orjson.dumps(state)

    @classmethod
    def decode(cls, raw: bytes) -> Watermark:
        return cls(**orjson.loads(raw))


def encode_total(found: PeriodTotal) -> bytes:
    """A total as stored locally and in the changelog (JSON; Decimal as a string)."""
    state = found.total.to_state()
    state["c"] = found.customer_id
    state["m"] = found.meter
    state["ps"] = found.period_start_ms
    state["pe"] = found.period_end_ms
    if found.subscription_id is not None:
        state["s"] = found.subscription_id
        state["pk"] = found.plan_key
        state["pv"] = found.plan_version
    if found.terms_start_ms is not None:
        state["ts"] = found.terms_start_ms
    if found.segments is not None:
        state["sg"] = [segment.to_state() for segment in found.segments]
    return orjson.dumps(state)


def decode_total(raw: bytes) -> PeriodTotal:
    """A total `encode_total` wrote (one written before terms segments existed has none: every
    event of it under its own terms)."""
    state = orjson.loads(raw)
    total = RunningTotal.from_state(state)
    segments = state.get("sg")
    return PeriodTotal(
        customer_id=state["c"],
        meter=state["m"],
        period_start_ms=state["ps"],
        period_end_ms=state["pe"],
        subscription_id=state.get("s"),
        plan_key=state.get("pk"),
        plan_version=state.get("pv"),
        total=total,
        terms_start_ms=state.get("ts"),
        segments=None
        if segments is None
        else [SegmentTotal.from_state(segment, total.aggregation) for segment in segments],
    )


def dedup_key(customer_id: str, event_id: str) -> bytes:
    customer = customer_id.encode()
    return DEDUP + len(customer).to_bytes(4, "big") + customer + event_id.encode()


def encode_seen(seen: FirstSeen) -> bytes:
    return f"{seen.partition} {seen.offset} {seen.event_ms}".encode()


def decode_seen(raw: bytes) -> FirstSeen:
    partition, offset, event_ms = raw.split(b" ")
    return FirstSeen(int(partition), int(offset), int(event_ms))


def encode_dedup_group(entries: Iterable[tuple[str, str, FirstSeen]]) -> bytes:
    """The dedup entries of one partition-batch, as one changelog record."""
    rows = [
        [customer, event_id, seen.partition, seen.offset, seen.event_ms]
        for customer, event_id, seen in entries
    ]
    return orjson.dumps(rows)


def decode_dedup_group(raw: bytes) -> Iterator[tuple[str, str, FirstSeen]]:
    for customer, event_id, partition, offset, event_ms in orjson.loads(raw):
        yield customer, event_id, FirstSeen(partition, offset, event_ms)


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._owner = self._take_ownership(directory / "owner.lock")
        self.db = self._open(directory / "state")
        if self.db.get(FORMAT_KEY) != FORMAT:
            self._reset_format()

    def _reset_format(self) -> None:
        """An empty store, or one of an older key format: start empty (recovery rebuilds it from the
        changelog, from offset 0) and record the current format."""
        if self.db.get(FORMAT_KEY) is not None or any(True for _ in self.db.keys()):
            log.warning(
                "state in %s has another key format: rebuilding it from the changelog", self.directory
            )
            self.db.close()
            Rdict.destroy(str(self.directory / "state"), Options(raw_mode=True))
            self.db = self._open(self.directory / "state")
        self.db.put(FORMAT_KEY, FORMAT)

    @staticmethod
    def _take_ownership(path: Path) -> IO[str]:
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise ConfigurationError(
                f"{path.parent} is in use by {owner}; give each worker its own data dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        return handle

    @staticmethod
    def _open(path: Path) -> Rdict:
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        # Most dedup lookups are of events never seen: a bloom filter per table answers "not
        # here" without reading its blocks. Measured (ops.bench_metering, 800k-event backlog):
        # 27.2k -> 29.2-32.5k events/s (two runs); keeping index and filter blocks in a block cache of their own
        # made it slower (22.5k).
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        options.set_block_based_table_factory(table)
        # We hold owner.lock, so no live worker uses this directory: a RocksDB LOCK file here was
        # left by a worker that was killed. RocksDB's own lock is an fcntl lock the kernel released
        # with the dead process; remove the file anyway so a stale one can never block a restart.
        stale = path / "LOCK"
        if stale.exists():
            log.info("removing RocksDB LOCK left by a previous worker in %s", path)
            stale.unlink()
        return Rdict(str(path), options)

    # -- reads --------------------------------------------------------------------------------------
    def watermark(self, partition: int) -> Watermark:
        raw = self.db.get(WATERMARK + str(partition).encode())
        return Watermark() if raw is None else Watermark.decode(raw)

    def aggregate(self, key: str) -> PeriodTotal | None:
        raw = self.db.get(AGGREGATE + key.encode())
        return None if raw is None else decode_total(raw)

    def seen(self, customer_id: str, event_id: str) -> FirstSeen | None:
        raw = self.db.get(dedup_key(customer_id, event_id))
        return None if raw is None else decode_seen(raw)

    def seen_many(self, keys: list[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        found: list[bytes | None] = self.db[keys]  # type: ignore[index,assignment]  # rocksdict multi-get
        return found

    # -- writes -------------------------------------------------------------------------------------
    def write(self, batch: WriteBatch) -> None:
        self.db.write(batch)

    def expire(self, now_ms: int, window_ms: int) -> int:
        """Forget dedup entries and totals no event can reach any more (older than the window)."""
        batch = WriteBatch(raw_mode=True)
        removed = 0
        horizon = now_ms - window_ms
        for key, raw in self.db.items(from_key=DEDUP):
            assert isinstance(key, bytes) and isinstance(raw, bytes)
            if not key.startswith(DEDUP):
                break
            if decode_seen(raw).event_ms < horizon:
                batch.delete(key)
                removed += 1
        for key, raw in self.db.items(from_key=AGGREGATE):
            assert isinstance(key, bytes) and isinstance(raw, bytes)
            if not key.startswith(AGGREGATE):
                break
            if orjson.loads(raw)["pe"] < horizon:
                batch.delete(key)
                removed += 1
        if removed:
            self.db.write(batch)
        return removed

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            self._owner.close()
