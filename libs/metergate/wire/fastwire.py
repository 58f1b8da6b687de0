"""Hot records read and written by hand, with exactly the results of `metergate.wire.codec`.

The codec (fastavro + a pydantic model) costs ~30 us per UsageAggregate: fastavro's generic set-up
per call, its logical-type conversions, then model validation. The metering worker and the rating
consumer handle tens of thousands of records per second, so their hot records are read and written
here field by field (Avro binary: zigzag varints, length-prefixed strings and bytes, union branch
indexes), with the same results:

- `read_aggregate(value)`: a usage.aggregates value as an `AggregateUpdate` (rating). Timestamps as
  fastavro makes them (`epoch + timedelta`, UTC), decimals as fastavro makes them (38-digit
  context, scale 9: `Decimal('1234.000000000')`), the model's constraints checked (identifiers
  1-256 characters);
- `read_event(value)`: a UsageEvent datum with `timestamp` as int milliseconds and `quantity` as a
  Decimal (metering); records of an older schema version go through the codec;
- `write_aggregate(...)`: a UsageAggregate record from plain values (timestamps in milliseconds),
  byte for byte the codec's; `with_segments(record, segments)` adds the terms segments of a total
  whose terms changed during the period.

Anything the fast path does not decide (another writer schema, a record of another kind, a corrupt
body, a value it does not handle exactly the way fastavro does) goes through the codec or
fastavro, so errors carry the codec's reason codes (`not_avro`, `unknown_schema`,
`unexpected_schema`, `undecodable`, `invalid_record`) and messages. Unit tests compare both
directions with the codec on random records and on corrupt bytes.

Compiled: the build (`pip install -e .`, setup.py) compiles this module with Cython, with the C
types declared beside it in `fastwire.pxd` (the position and varints as C integers, the reader's
methods as C calls). The source stays plain Python and runs as it is where it was not compiled,
with the same results; `COMPILED` says which one is loaded.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal
from typing import Any, NamedTuple

import fastavro

from metergate.domain.rating import AggregateUpdate, SegmentUpdate
from metergate.domain.records import (
    QUANTITY_CONTEXT,
    QUANTITY_PRECISION,
    QUANTITY_SCALE,
    UsageAggregate,
    UsageEvent,
    aggregate_key,
)
from metergate.errors import DecodeError
from metergate.wire.codec import HEADER_SIZE, MAGIC, codec, registry

#: True when the Cython build of this module is loaded (a compiled module has no `__file__`
#: ending in .py)
COMPILED = not __file__.endswith(".py")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_aggregate_codec = codec(UsageAggregate)
_AGGREGATE = registry().current["UsageAggregate"]
_AGGREGATE_HEADER = MAGIC + _AGGREGATE.fingerprint
_FIELDS = [field["name"] for field in _AGGREGATE.parsed["fields"]]
#: the field order this module is written for; a schema change must update it (checked at import)
_READS = [
    "customer_id",
    "meter",
    "aggregation",
    "period_start",
    "period_end",
    "value",
    "event_count",
    "version",
    "last_event_at",
    "last_event_id",
    "late",
    "subscription_id",
    "plan_key",
    "plan_version",
    "updated_at",
    "segments",
]
if _FIELDS != _READS:
    raise RuntimeError(f"schemas/UsageAggregate.avsc fields changed ({_FIELDS}): update {__name__}")
_AGGREGATIONS = len(
    next(field for field in _AGGREGATE.parsed["fields"] if field["name"] == "aggregation")["type"]["symbols"]
)
_MAX_UNSCALED = 10**QUANTITY_PRECISION  # beyond it fastavro's 38-digit context would round
_DECIMALS = Context(prec=QUANTITY_PRECISION)
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


class _NotFast(Exception):
    """The fast path does not decide this record: the codec does."""


class _Reader:
    """One record's bytes and a position in them; every read moves the position past what it read.

    Past the end: IndexError (from indexing) or _NotFast; invalid UTF-8: UnicodeDecodeError. The
    callers hand each of these to the codec, which words the error.
    """

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos
        self.size = len(data)

    def byte(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def varint(self) -> int:
        """A zigzag varint (Avro int/long): at most 10 bytes, within a signed 64-bit long."""
        data = self.data
        pos = self.pos
        byte = data[pos]
        value = byte & 0x7F
        shift = 7
        while byte >= 0x80:
            pos += 1
            byte = data[pos]
            if shift == 63 and byte > 1:
                raise _NotFast("varint beyond a 64-bit long")
            part = byte & 0x7F  # a 64-bit integer when compiled, so the shift cannot overflow
            value |= part << shift
            shift += 7
        self.pos = pos + 1
        return (value >> 1) ^ -(value & 1)

    def _end_of(self, size: int) -> int:
        end = self.pos + size
        if size < 0 or end > self.size:
            raise _NotFast("length past the end")
        return end

    def text(self) -> str:
        end = self._end_of(self.varint())
        start = self.pos
        self.pos = end
        return self.data[start:end].decode()

    def identifier(self) -> str:
        text = self.text()
        if not 1 <= len(text) <= 256:
            raise _NotFast("identifier length")  # the model refuses it: the codec says how
        return text

    def skip_text(self) -> None:
        self.pos = self._end_of(self.varint())

    def present(self) -> bool:
        """The branch of a ["null", X] union: False for null, True for X."""
        branch = self.byte()
        if branch == 0:
            return False
        if branch != 2:
            raise _NotFast("union branch")
        return True

    def optional_text(self) -> str | None:
        return self.text() if self.present() else None

    def optional_int(self) -> int | None:
        if not self.present():
            return None
        value = self.varint()
        if not _INT_MIN <= value <= _INT_MAX:
            raise _NotFast("int out of range")
        return value

    def unscaled(self, size: int) -> int:
        """`size` bytes of a decimal: a big-endian two's complement integer."""
        end = self._end_of(size)
        start = self.pos
        self.pos = end
        if size > 7:
            return int.from_bytes(self.data[start:end], "big", signed=True)
        data = self.data
        value = -1 if size and data[start] >= 0x80 else 0  # the sign extended
        for pos in range(start, end):
            byte = data[pos]
            value = value * 256 + byte
        return value

    def decimal(self) -> Decimal:
        """A decimal(38, 9) as fastavro makes it (38-digit context, scale 9)."""
        size = self.byte()
        if not 0 < size < 0x80 or size & 1:
            raise _NotFast("decimal size")
        unscaled = self.unscaled(size >> 1)
        if not -_MAX_UNSCALED < unscaled < _MAX_UNSCALED:
            raise _NotFast("decimal beyond 38 digits")
        return Decimal(unscaled).scaleb(-QUANTITY_SCALE, _DECIMALS)

    def done(self) -> bool:
        return self.pos == self.size


class _Head(NamedTuple):
    """What every version of one aggregate key has in common (the record's first five fields)."""

    key: str
    customer_id: str
    meter: str
    period_start: datetime
    period_end: datetime


#: raw bytes of the first five fields -> their decoded values (bounded: cleared when full)
_HEADS: dict[bytes, _Head] = {}
_MAX_HEADS = 200_000


def _head(raw: bytes) -> _Head:
    reader = _Reader(raw, 0)
    customer_id = reader.identifier()
    meter = reader.identifier()
    aggregation = reader.varint()
    if not 0 <= aggregation < _AGGREGATIONS:
        raise _NotFast("enum index")
    period_start = _EPOCH + timedelta(microseconds=reader.varint() * 1000)
    period_end = _EPOCH + timedelta(microseconds=reader.varint() * 1000)
    if not reader.done():
        raise _NotFast("head length")
    return _Head(
        aggregate_key(customer_id, meter, period_start), customer_id, meter, period_start, period_end
    )


def read_aggregate(value: bytes) -> AggregateUpdate:
    """Decode a usage.aggregates value (raises DecodeError with the codec's reason codes)."""
    if value.startswith(_AGGREGATE_HEADER):
        try:
            return _read(value)
        except (_NotFast, IndexError, UnicodeDecodeError, OverflowError, ValueError):
            pass
    return AggregateUpdate.of(_aggregate_codec.decode(value))


def _moment(ms: int) -> datetime:
    """A timestamp-millis as fastavro makes it (`epoch + timedelta`, UTC)."""
    if 0 <= ms < _EXACT_FLOAT_MS:
        return _from_timestamp(ms / 1000, UTC)  # ~3x cheaper; exact here (see _EXACT_FLOAT_MS)
    return _EPOCH + timedelta(microseconds=ms * 1000)


#: below 2**32 seconds (year 2106), ms / 1000 as a float is within 0.5 us of the exact time, so
#: fromtimestamp's rounding to the microsecond gives exactly the millisecond (tested on every
#: millisecond boundary case and at random against the codec)
_EXACT_FLOAT_MS = 2**32 * 1000
_from_timestamp = datetime.fromtimestamp
_new = tuple.__new__  # builds the NamedTuple without its Python-level __new__ (~0.25 us less)


def _read(data: bytes) -> AggregateUpdate:
    reader = _Reader(data, HEADER_SIZE)
    # customer_id, meter, aggregation, period_start, period_end: decoded once per key (_HEADS)
    reader.skip_text()
    reader.skip_text()
    reader.varint()
    reader.varint()
    reader.varint()
    raw = data[HEADER_SIZE : reader.pos]
    head = _HEADS.get(raw)
    if head is None:
        head = _head(raw)
        if len(_HEADS) >= _MAX_HEADS:
            _HEADS.clear()
        _HEADS[raw] = head
    quantity = reader.decimal()
    event_count = reader.varint()
    version = reader.varint()
    last_ms = reader.varint()
    last_event_id = reader.text()
    if reader.byte() > 1:
        raise _NotFast("boolean")
    subscription_id = reader.optional_text()
    plan_key = reader.optional_text()
    plan_version = reader.optional_int()
    updated_ms = reader.varint()  # rating does not use it, but fastavro refuses one past year 9999
    if not 0 <= updated_ms < _EXACT_FLOAT_MS:
        _EPOCH + timedelta(microseconds=updated_ms * 1000)  # OverflowError: the codec decides
    segments = _segments(reader)
    if not reader.done():
        raise _NotFast("trailing bytes")  # the codec names them (reason undecodable)
    return _new(  # type: ignore[no-any-return]
        AggregateUpdate,
        (
            head.key,
            head.customer_id,
            head.meter,
            head.period_start,
            head.period_end,
            quantity,
            event_count,
            version,
            _moment(last_ms),
            last_event_id,
            subscription_id,
            plan_key,
            plan_version,
            segments,
        ),
    )


def _segments(reader: _Reader) -> tuple[SegmentUpdate, ...]:
    """The array of TermsSegment records (blocks of items, ended by a 0 count); an empty array is
    one 0 byte (the common case)."""
    count = reader.varint()
    if not count:
        return ()
    found: list[SegmentUpdate] = []
    while count:
        if count < 0:  # a block with its size in bytes
            count = -count
            reader.varint()
        for _ in range(count):
            start_ms = reader.varint()
            subscription_id = reader.optional_text()
            plan_key = reader.optional_text()
            plan_version = reader.optional_int()
            value = reader.decimal()
            event_count = reader.varint()
            found.append(
                SegmentUpdate(
                    _EPOCH + timedelta(microseconds=start_ms * 1000),
                    subscription_id,
                    plan_key,
                    plan_version,
                    value,
                    event_count,
                )
            )
        count = reader.varint()
    return tuple(found)


# -- the metering worker's hot records ------------------------------------------------------------
_event_codec = codec(UsageEvent)
_EVENT = registry().current["UsageEvent"]
_EVENT_HEADER = MAGIC + _EVENT.fingerprint
_AGGREGATION_INDEX = {
    symbol: index
    for field in _AGGREGATE.parsed["fields"]
    if field["name"] == "aggregation"
    for index, symbol in enumerate(field["type"]["symbols"])
}
_EVENT_FIELDS = [field["name"] for field in _EVENT.parsed["fields"]]
if _EVENT_FIELDS != [
    "event_id",
    "customer_id",
    "subject_id",
    "meter",
    "quantity",
    "timestamp",
    "properties",
    "source",
]:
    raise RuntimeError(f"schemas/UsageEvent.avsc fields changed ({_EVENT_FIELDS}): update {__name__}")


def _plain(schema: Any) -> Any:
    """The event schema with its logical types removed (same bytes, no conversions)."""
    plain = copy.deepcopy(schema)
    for field in plain["fields"]:
        kind = field["type"]
        if isinstance(kind, dict) and kind.get("logicalType") in ("timestamp-millis", "decimal"):
            field["type"] = kind["type"]
    return fastavro.parse_schema(plain)


_PLAIN_EVENT = _plain(_EVENT.parsed)

#: unscaled quantity -> its Decimal: events repeat a few quantities, and a Decimal is immutable
_QUANTITIES: dict[int, Decimal] = {}
_MAX_QUANTITIES = 65_536


def _quantity(unscaled: int) -> Decimal:
    quantity = _QUANTITIES.get(unscaled)
    if quantity is None:
        quantity = Decimal(unscaled).scaleb(-QUANTITY_SCALE, QUANTITY_CONTEXT)
        if len(_QUANTITIES) >= _MAX_QUANTITIES:
            _QUANTITIES.clear()
        _QUANTITIES[unscaled] = quantity
    return quantity


def read_event(value: bytes | None) -> dict[str, Any]:
    """Decode a usage.events value; DecodeError (with the codec's reason codes) when it is not one."""
    if value is not None and value.startswith(_EVENT_HEADER):
        try:
            return _event_by_hand(value)
        except (_NotFast, IndexError, UnicodeDecodeError):
            pass  # fastavro decides, and words the error
        body = io.BytesIO(value[HEADER_SIZE:])
        try:
            datum = fastavro.schemaless_reader(body, _PLAIN_EVENT, None)
        except Exception as exc:  # fastavro raises many types for a corrupt body
            raise DecodeError(f"corrupt UsageEvent body: {exc}", reason="undecodable") from None
        extra = len(value) - HEADER_SIZE - body.tell()
        if extra:
            raise DecodeError(
                f"UsageEvent body followed by {extra} trailing byte(s): one record per message",
                reason="undecodable",
            )
        assert isinstance(datum, dict)
        unscaled = int.from_bytes(datum["quantity"], "big", signed=True)
        datum["quantity"] = Decimal(unscaled).scaleb(-QUANTITY_SCALE, QUANTITY_CONTEXT)
        return datum
    datum = _event_codec.decode_dict(value)  # other writer versions, or the codec's error
    timestamp = datum["timestamp"]
    # exact: float seconds * 1000 would turn 1.001 s into 1000 ms
    datum["timestamp"] = (timestamp - _EPOCH) // _ONE_MS if isinstance(timestamp, datetime) else timestamp
    return datum


def _event_by_hand(data: bytes) -> dict[str, Any]:
    """The current UsageEvent schema read field by field;
    _NotFast / IndexError / UnicodeDecodeError: let fastavro decide."""
    reader = _Reader(data, HEADER_SIZE)
    event_id = reader.text()
    customer_id = reader.text()
    subject_id = reader.optional_text()
    meter = reader.text()
    quantity = _quantity(reader.unscaled(reader.varint()))
    timestamp = reader.varint()
    properties: dict[str, str] = {}
    count = reader.varint()
    while count:
        if count < 0:  # a block with its size in bytes
            count = -count
            reader.varint()
        for _ in range(count):
            key = reader.text()
            properties[key] = reader.text()
        count = reader.varint()
    source = reader.optional_text()
    if not reader.done():
        raise _NotFast("trailing bytes")  # fastavro's path words the error
    return {
        "event_id": event_id,
        "customer_id": customer_id,
        "subject_id": subject_id,
        "meter": meter,
        "quantity": quantity,
        "timestamp": timestamp,
        "properties": properties,
        "source": source,
    }


def _put_long(out: bytearray, value: int) -> None:
    """An Avro long as a zigzag varint."""
    zigzag = value
    zigzag = (zigzag << 1) ^ (value >> 63)
    while zigzag > 0x7F:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)


def _put_string(out: bytearray, value: str) -> None:
    data = value.encode()
    _put_long(out, len(data))
    out += data


def _put_optional_string(out: bytearray, text: str | None) -> None:
    if text is None:
        out.append(0)
    else:
        out.append(2)  # union branch 1, zigzag-encoded
        _put_string(out, text)


def _put_optional_int(out: bytearray, value: int | None) -> None:
    if value is None:
        out.append(0)
    else:
        out.append(2)
        _put_long(out, value)


def _put_decimal(out: bytearray, value: Decimal) -> None:
    unscaled = int(value.scaleb(QUANTITY_SCALE, QUANTITY_CONTEXT))
    if Decimal(unscaled).scaleb(-QUANTITY_SCALE, QUANTITY_CONTEXT) != value:
        raise ValueError(f"{value} has more than {QUANTITY_SCALE} digits after the point")
    # as fastavro sizes it (bit_length + 1 sign bit, rounded up to bytes): the same bytes as the
    # codec, including the negatives whose minimal form would be one byte shorter (-128 -> ff 80)
    length = unscaled.bit_length() // 8 + 1
    data = unscaled.to_bytes(length, "big", signed=True)
    _put_long(out, len(data))
    out += data


def write_aggregate(
    *,
    customer_id: str,
    meter: str,
    aggregation: str,
    period_start_ms: int,
    period_end_ms: int,
    value: Decimal,
    event_count: int,
    version: int,
    last_event_ms: int,
    last_event_id: str,
    late: bool,
    subscription_id: str | None,
    plan_key: str | None,
    plan_version: int | None,
    updated_at_ms: int,
) -> bytes:
    """A UsageAggregate record without segments (`with_segments` adds them)."""
    out = bytearray(_AGGREGATE_HEADER)
    _put_string(out, customer_id)
    _put_string(out, meter)
    _put_long(out, _AGGREGATION_INDEX[aggregation])
    _put_long(out, period_start_ms)
    _put_long(out, period_end_ms)
    _put_decimal(out, value)
    _put_long(out, event_count)
    _put_long(out, version)
    _put_long(out, last_event_ms)
    _put_string(out, last_event_id)
    out.append(1 if late else 0)
    _put_optional_string(out, subscription_id)
    _put_optional_string(out, plan_key)
    _put_optional_int(out, plan_version)
    _put_long(out, updated_at_ms)
    out.append(0)  # segments: an empty array
    return bytes(out)


def with_segments(
    record: bytes, segments: Sequence[tuple[int, str | None, str | None, int | None, Decimal, int]]
) -> bytes:
    """`record` (from `write_aggregate`: its last field, segments, an empty array) with `segments`
    instead: (start ms, subscription_id, plan_key, plan_version, value, event_count) each. Apart,
    so the common record pays nothing for them."""
    if not segments:
        return record
    out = bytearray(record[:-1])
    _put_long(out, len(segments))  # one block, as fastavro writes it
    for start_ms, subscription_id, plan_key, plan_version, value, event_count in segments:
        _put_long(out, start_ms)
        _put_optional_string(out, subscription_id)
        _put_optional_string(out, plan_key)
        _put_optional_int(out, plan_version)
        _put_decimal(out, value)
        _put_long(out, event_count)
    out.append(0)  # the end of the array
    return bytes(out)
