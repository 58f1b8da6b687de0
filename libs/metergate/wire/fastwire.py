"""Hot records read by hand, with exactly the results of `metergate.wire.codec`.

The codec (fastavro + a pydantic model) costs ~30 us per UsageAggregate: fastavro's generic set-up
per call, its logical-type conversions, then model validation. A consumer that reads tens of
thousands of aggregates per second spends most of its time there. This module reads the current
UsageAggregate schema directly (Avro binary: zigzag varints, length-prefixed strings and bytes,
union branch indexes) in a few microseconds, with the same results:

- timestamps as fastavro makes them (`epoch + timedelta`, UTC), decimals as fastavro makes them
  (38-digit context, scale 9: `Decimal('1234.000000000')`);
- the model's constraints checked (identifiers 1-256 characters);
- anything else (another writer schema, a record of another kind, a corrupt body, a value the
  fast path does not handle exactly the way fastavro does) goes through the codec, so errors carry
  the codec's reason codes (`not_avro`, `unknown_schema`, `unexpected_schema`, `undecodable`,
  `invalid_record`) and messages.

Unit tests compare it with the codec on random records and on corrupt bytes. The metering
worker's hand-written UsageEvent reader and UsageAggregate writer (`services/metering/fastwire.py`)
are the same mechanism for its own hot path and can move here, next to this reader.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal
from typing import NamedTuple

from metergate.domain.rating import AggregateUpdate
from metergate.domain.records import QUANTITY_PRECISION, QUANTITY_SCALE, UsageAggregate, aggregate_key
from metergate.wire.codec import HEADER_SIZE, MAGIC, codec, registry

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_aggregate_codec = codec(UsageAggregate)
_AGGREGATE = registry().current["UsageAggregate"]
_AGGREGATE_HEADER = MAGIC + _AGGREGATE.fingerprint
_FIELDS = [field["name"] for field in _AGGREGATE.parsed["fields"]]
#: the field order this reader is written for; a schema change must update it (checked at import)
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
]
if _FIELDS != _READS:
    raise RuntimeError(f"schemas/UsageAggregate.avsc fields changed ({_FIELDS}): update {__name__}")
_AGGREGATIONS = len(
    next(field for field in _AGGREGATE.parsed["fields"] if field["name"] == "aggregation")["type"]["symbols"]
)
_MAX_UNSCALED = 10**QUANTITY_PRECISION  # beyond it fastavro's 38-digit context would round
_DECIMALS = Context(prec=QUANTITY_PRECISION)
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


class _NotFast(Exception):
    """The fast path does not decide this record: the codec does."""


def _long(data: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint (Avro int/long) at `pos`: (value, next position)."""
    byte = data[pos]
    if byte < 0x80:
        return (byte >> 1) ^ -(byte & 1), pos + 1
    value = byte & 0x7F
    shift = 7
    while True:
        pos += 1
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift > 63:
            raise _NotFast("varint longer than 10 bytes")
    value = (value >> 1) ^ -(value & 1)
    if not _LONG_MIN <= value <= _LONG_MAX:
        raise _NotFast("long out of range")
    return value, pos + 1


def _string(data: bytes, pos: int) -> tuple[str, int]:
    size, pos = _long(data, pos)
    end = pos + size
    if size < 0 or end > len(data):
        raise _NotFast("string past the end")
    return data[pos:end].decode(), end


def _identifier(data: bytes, pos: int) -> tuple[str, int]:
    text, pos = _string(data, pos)
    if not 1 <= len(text) <= 256:
        raise _NotFast("identifier length")  # the model refuses it: the codec says how
    return text, pos


def _optional_string(data: bytes, pos: int) -> tuple[str | None, int]:
    branch = data[pos]
    if branch == 0:
        return None, pos + 1
    if branch != 2:
        raise _NotFast("union branch")
    return _string(data, pos + 1)


#: one varint: up to 9 bytes with the high bit set, then one without (found in C, not in a loop)
_VARINT = re.compile(rb"[\x80-\xff]{0,9}[\x00-\x7f]")
#: the end of aggregation, period_start, period_end (three varints) after the two identifiers
_KEY_TAIL = re.compile(rb"[\x00-\x7f](?:[\x80-\xff]{0,9}[\x00-\x7f]){2}")


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


def _head(data: bytes, pos: int, end: int) -> _Head:
    customer_id, pos = _identifier(data, pos)
    meter, pos = _identifier(data, pos)
    aggregation, pos = _long(data, pos)
    if not 0 <= aggregation < _AGGREGATIONS:
        raise _NotFast("enum index")
    start_ms, pos = _long(data, pos)
    end_ms, pos = _long(data, pos)
    if pos != end:
        raise _NotFast("head length")
    period_start = _EPOCH + timedelta(microseconds=start_ms * 1000)
    period_end = _EPOCH + timedelta(microseconds=end_ms * 1000)
    return _Head(
        aggregate_key(customer_id, meter, period_start), customer_id, meter, period_start, period_end
    )


def read_aggregate(value: bytes) -> AggregateUpdate:
    """Decode a usage.aggregates value (raises DecodeError with the codec's reason codes)."""
    if value[:HEADER_SIZE] == _AGGREGATE_HEADER:
        try:
            return _read(value)
        except (_NotFast, IndexError, UnicodeDecodeError, OverflowError, ValueError, AttributeError):
            pass
    return AggregateUpdate.of(_aggregate_codec.decode(value))


def _read(data: bytes) -> AggregateUpdate:
    # customer_id and meter: their lengths (one byte each below 64 bytes), then three varints
    pos = HEADER_SIZE
    size = data[pos]
    if size >= 0x80:
        _, pos = _string(data, pos)
    else:
        pos += 1 + (size >> 1)
    size = data[pos]
    if size >= 0x80:
        _, pos = _string(data, pos)
    else:
        pos += 1 + (size >> 1)
    end = _KEY_TAIL.match(data, pos).end()  # type: ignore[union-attr]  # None: AttributeError
    raw = data[HEADER_SIZE:end]
    head = _HEADS.get(raw)
    if head is None:
        head = _head(data, HEADER_SIZE, end)
        if len(_HEADS) >= _MAX_HEADS:
            _HEADS.clear()
        _HEADS[raw] = head
    # value: decimal(38, 9) as big-endian two's complement bytes
    size = data[end]
    if not 0 < size < 0x80:
        raise _NotFast("decimal size")
    pos = end + 1
    end = pos + (size >> 1)
    if size & 1 or end > len(data):
        raise _NotFast("decimal bytes")
    unscaled = int.from_bytes(data[pos:end], "big", signed=True)
    if not -_MAX_UNSCALED < unscaled < _MAX_UNSCALED:
        raise _NotFast("decimal beyond 38 digits")
    quantity = Decimal(unscaled).scaleb(-QUANTITY_SCALE, _DECIMALS)
    event_count, pos = _long(data, end)
    version, pos = _long(data, pos)
    last_ms, pos = _long(data, pos)
    last_event_id, pos = _string(data, pos)
    if data[pos] > 1:
        raise _NotFast("boolean")
    subscription_id, pos = _optional_string(data, pos + 1)
    plan_key, pos = _optional_string(data, pos)
    plan_version: int | None = None
    branch = data[pos]
    if branch == 0:
        pos += 1
    elif branch == 2:
        plan_version, pos = _long(data, pos + 1)
        if not -(2**31) <= plan_version < 2**31:
            raise _NotFast("int out of range")
    else:
        raise _NotFast("union branch")
    # updated_at (rating does not use it): a varint of up to 6 bytes is a timestamp before 2039;
    # a longer one is decoded, since fastavro refuses one beyond year 9999
    end = _VARINT.match(data, pos).end()  # type: ignore[union-attr]
    if end != len(data):
        raise _NotFast("trailing bytes")  # the codec names them (reason undecodable)
    if end - pos > 6:
        updated_ms, _ = _long(data, pos)
        _EPOCH + timedelta(microseconds=updated_ms * 1000)
    return AggregateUpdate(
        head.key,
        head.customer_id,
        head.meter,
        head.period_start,
        head.period_end,
        quantity,
        event_count,
        version,
        _EPOCH + timedelta(microseconds=last_ms * 1000),
        last_event_id,
        subscription_id,
        plan_key,
        plan_version,
    )
