"""The two hot records of the metering worker, read and written without per-record overhead.

Byte for byte the same wire format as `metergate.wire.codec` (Avro single-object encoding of the
schemas in `schemas/`); unit tests compare the bytes with the codec's. Why: per touched key and per
event these are the most frequent operations of a batch; fastavro spends most of its ~15 µs per
UsageAggregate on generic set-up and ~10 µs per UsageEvent converting logical types the worker
converts straight back (timestamps to datetimes and back to milliseconds).

- `read_event(value)`: a UsageEvent datum with `timestamp` as int milliseconds and `quantity` as a
  Decimal; records written by an older schema version (`schemas/history/`) go through the codec.
- `write_aggregate(...)`: a UsageAggregate record from plain values (timestamps in milliseconds).
"""

from __future__ import annotations

import copy
import io
from decimal import Context, Decimal
from functools import lru_cache
from typing import Any

import fastavro

from metergate.domain.records import QUANTITY_SCALE, UsageEvent
from metergate.errors import DecodeError
from metergate.wire.codec import HEADER_SIZE, MAGIC, codec, registry

_event_codec = codec(UsageEvent)
_EVENT = registry().current["UsageEvent"]
_AGGREGATE = registry().current["UsageAggregate"]
_AGGREGATE_HEADER = MAGIC + _AGGREGATE.fingerprint
_AGGREGATIONS = {
    symbol: index
    for field in _AGGREGATE.parsed["fields"]
    if field["name"] == "aggregation"
    for index, symbol in enumerate(field["type"]["symbols"])
}


def _plain(schema: Any) -> Any:
    """The event schema with its logical types removed (same bytes, no conversions)."""
    plain = copy.deepcopy(schema)
    for field in plain["fields"]:
        kind = field["type"]
        if isinstance(kind, dict) and kind.get("logicalType") in ("timestamp-millis", "decimal"):
            field["type"] = kind["type"]
    return fastavro.parse_schema(plain)


_PLAIN_EVENT = _plain(_EVENT.parsed)
#: exact for every decimal(38, 9) (the default context keeps 28 digits and would round)
_EXACT = Context(prec=80)


def read_event(value: bytes | None) -> dict[str, Any]:
    """Decode a usage.events value; DecodeError (with the codec's reason codes) when it is not one."""
    if (
        value is not None
        and len(value) >= HEADER_SIZE
        and value[:2] == MAGIC
        and value[2:HEADER_SIZE] == _EVENT.fingerprint
    ):
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
        datum["quantity"] = Decimal(unscaled).scaleb(-QUANTITY_SCALE, _EXACT)
        return datum
    datum = _event_codec.decode_dict(value)  # other writer versions, or the codec's error
    timestamp = datum["timestamp"]
    datum["timestamp"] = int(timestamp.timestamp() * 1000) if hasattr(timestamp, "timestamp") else timestamp
    return datum


def _long(out: bytearray, value: int) -> None:
    if 0 <= value < 64:
        out.append(value << 1)  # zigzag of a small non-negative number: one byte
    else:
        out += _varint(value)


@lru_cache(maxsize=65536)
def _varint(value: int) -> bytes:
    """Zigzag varint of an Avro long (cached: timestamps and period bounds repeat a lot)."""
    value = (value << 1) ^ (value >> 63)
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(out: bytearray, value: str) -> None:
    data = value.encode()
    _long(out, len(data))
    out += data


def _decimal(out: bytearray, value: Decimal) -> None:
    unscaled = int(value.scaleb(QUANTITY_SCALE, _EXACT))
    if Decimal(unscaled).scaleb(-QUANTITY_SCALE, _EXACT) != value:
        raise ValueError(f"{value} has more than {QUANTITY_SCALE} digits after the point")
    # as fastavro sizes it (bit_length + 1 sign bit, rounded up to bytes): the same bytes as the
    # codec, including the negatives whose minimal form would be one byte shorter (-128 -> ff 80)
    length = unscaled.bit_length() // 8 + 1
    data = unscaled.to_bytes(length, "big", signed=True)
    _long(out, len(data))
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
    out = bytearray(_AGGREGATE_HEADER)
    _string(out, customer_id)
    _string(out, meter)
    _long(out, _AGGREGATIONS[aggregation])
    _long(out, period_start_ms)
    _long(out, period_end_ms)
    _decimal(out, value)
    _long(out, event_count)
    _long(out, version)
    _long(out, last_event_ms)
    _string(out, last_event_id)
    out.append(1 if late else 0)
    for text in (subscription_id, plan_key):
        if text is None:
            out.append(0)
        else:
            out.append(2)  # union branch 1, zigzag-encoded
            _string(out, text)
    if plan_version is None:
        out.append(0)
    else:
        out.append(2)
        _long(out, plan_version)
    _long(out, updated_at_ms)
    return bytes(out)
