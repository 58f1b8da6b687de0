"""Acceptance rules of a decoded usage event, as the metering worker applies them (pure).

`check_event` is the fast path of `UsageEvent.parse` for a datum fresh from the Avro decoder (the
schema already guarantees the types), plus the rules that need the catalog and a clock. Each
rejection has a stable reason code (the DLQ `reason`) and a message naming the field:

| reason | when |
| --- | --- |
| missing_field | event_id, customer_id or meter empty |
| invalid_field | an identifier longer than 256 characters |
| invalid_quantity | quantity not finite, negative, too many digits, or >= 10^29 |
| invalid_timestamp | timestamp without a timezone (cannot come from Avro; kept for other decoders) |
| future_timestamp | timestamp later than now + the allowed future skew |
| outside_dedup_window | timestamp older than now - the dedup window: could not be deduplicated |
| unknown_meter | the meter is not in the catalog |
| missing_property | a UNIQUE_COUNT meter and the event lacks its unique property |
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from metergate.domain.records import QUANTITY_PRECISION, QUANTITY_SCALE, Aggregation, MeterDefinition

_ZERO = Decimal(0)
_SCALE_STEP = Decimal(1).scaleb(-QUANTITY_SCALE)
#: a quantity must be below 10^29 (decimal(38, 9)); compared by exponent, not through a rounded constant
_MAX_ADJUSTED = QUANTITY_PRECISION - QUANTITY_SCALE - 1


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    message: str


def check_shape(datum: dict[str, Any]) -> Rejection | None:
    """Rules of the event alone (no catalog, no clock)."""
    for name in ("event_id", "customer_id", "meter"):
        value = datum.get(name)
        if not value:
            return Rejection("missing_field", f"{name}: required field is missing or empty")
        if len(value) > 256:
            return Rejection("invalid_field", f"{name}: longer than 256 characters ({len(value)})")
    quantity = datum.get("quantity")
    if not isinstance(quantity, Decimal):
        return Rejection("invalid_quantity", f"quantity: expected a decimal, got {quantity!r}")
    if not quantity.is_finite():
        return Rejection("invalid_quantity", f"quantity: must be a finite number, got {quantity}")
    if quantity < _ZERO:
        return Rejection("invalid_quantity", f"quantity: must be >= 0, got {quantity}")
    if quantity.adjusted() > _MAX_ADJUSTED:
        return Rejection("invalid_quantity", f"quantity: must be below 10^29, got {quantity:.6E}")
    exponent = quantity.as_tuple().exponent
    if (
        isinstance(exponent, int)
        and exponent < -QUANTITY_SCALE
        and quantity != quantity.quantize(_SCALE_STEP)
    ):
        return Rejection("invalid_quantity", f"quantity: more than {QUANTITY_SCALE} digits after the point")
    timestamp = datum.get("timestamp")
    if isinstance(timestamp, int) and not isinstance(timestamp, bool):
        return None  # milliseconds since the epoch, UTC (as Avro timestamp-millis carries it)
    if not isinstance(timestamp, datetime) or timestamp.tzinfo is None:
        return Rejection("invalid_timestamp", f"timestamp: expected a UTC timestamp, got {timestamp!r}")
    return None


def check_time(event_ms: int, now_ms: int, *, future_skew_ms: int, window_ms: int) -> Rejection | None:
    """Clock rules: not too far in the future, not too old to deduplicate."""
    if event_ms > now_ms + future_skew_ms:
        ahead_s = (event_ms - now_ms) / 1000
        return Rejection(
            "future_timestamp",
            f"timestamp: {ahead_s:.0f}s ahead of the worker's clock (allowed: {future_skew_ms / 1000:.0f}s)",
        )
    if event_ms < now_ms - window_ms:
        age_days = (now_ms - event_ms) / 86_400_000
        return Rejection(
            "outside_dedup_window",
            f"timestamp: {age_days:.1f} days old, outside the {window_ms / 86_400_000:.0f}-day dedup window",
        )
    return None


def check_meter(datum: dict[str, Any], meter: MeterDefinition | None) -> Rejection | None:
    """Catalog rules: a known meter, and the unique property of a UNIQUE_COUNT meter."""
    if meter is None:
        return Rejection("unknown_meter", f"meter: {datum['meter']!r} is not a meter of the catalog")
    if meter.aggregation is Aggregation.UNIQUE_COUNT:
        prop = meter.unique_property or ""
        if not (datum.get("properties") or {}).get(prop):
            return Rejection(
                "missing_property", f"properties.{prop}: required by UNIQUE_COUNT meter {meter.meter}"
            )
    return None
