"""Acceptance rules of a decoded usage event, as the metering worker applies them (pure).

`check_shape` (ids via `check_ids`, quantity, properties) is the fast path of `UsageEvent.parse` for a
datum fresh from the Avro decoder (the schema already guarantees the types); `check_time` holds the
clock rules and `check_meter` the catalog rules. Each rejection has a stable reason code (the DLQ
`reason`) and a message naming the field:

| reason | when |
| --- | --- |
| missing_field | event_id, customer_id or meter missing or empty |
| invalid_field | an identifier (event_id, customer_id, subject_id, meter, source, a property name) or a property value that is empty where it must not be, too long, or holds a forbidden character |
| invalid_quantity | quantity not finite, negative, too many digits, or >= 10^29 |
| invalid_timestamp | timestamp without a timezone (cannot come from Avro; kept for other decoders) |
| future_timestamp | timestamp later than now + the allowed future skew |
| outside_dedup_window | timestamp older than now - the dedup window: could not be deduplicated |
| unknown_meter | the meter is not in the catalog |
| missing_property | a UNIQUE_COUNT meter and the event lacks its unique property |

Identifiers (`check_identifier`): at most 256 characters (so at most 1,024 UTF-8 bytes: no separate
byte cap is needed), and none of these Unicode categories, because an id is a key in every store and
log downstream and must mean one thing wherever it goes:

- Cc, control characters (NUL, tab, newline, ESC, DEL, C1 controls): NUL cannot be stored in a
  PostgreSQL text column at all, the others break logs, CSV exports and line-based tools;
- Cs, lone surrogates (U+D800..U+DFFF): not encodable as UTF-8, so not sendable or storable;
- Cf, format characters (zero-width space, BOM, bidi overrides): invisible, so two ids that look
  the same would be two customers;
- Zl, Zp, the line and paragraph separators (newlines in disguise).

(Cf also holds the zero-width joiner of emoji sequences: an id with one is refused too.) Other
non-printable characters (no-break spaces, private use, unassigned code points) are allowed.

Property names follow the identifier rule; property values (they become dimensions and
UNIQUE_COUNT members) may be empty or up to 1,024 characters, with the same character rule;
`source` is free text (empty allowed) of at most 256. A message names the field, the character and
its position (counted from 0, as Python indexes a string):
`customer_id: contains a control character (U+0000) at position 1`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from metergate.domain.records import (
    QUANTITY_CONTEXT,
    QUANTITY_PRECISION,
    QUANTITY_SCALE,
    Aggregation,
    MeterDefinition,
)

_ZERO = Decimal(0)
_SCALE_STEP = Decimal(1).scaleb(-QUANTITY_SCALE)
#: a quantity must be below 10^29 (decimal(38, 9)); compared by exponent, not through a rounded constant
_MAX_ADJUSTED = QUANTITY_PRECISION - QUANTITY_SCALE - 1


#: longest identifier, in characters (4 UTF-8 bytes at most each)
MAX_IDENTIFIER_CHARS = 256
#: longest property value, in characters
MAX_PROPERTY_VALUE_CHARS = 1024
#: Unicode categories an identifier or property value must not contain, with how a message names them
FORBIDDEN_CATEGORIES = {
    "Cc": "a control character",
    "Cs": "a lone surrogate (not encodable as UTF-8)",
    "Cf": "an invisible format character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    message: str
    field: str | None = None


def forbidden_character(value: str) -> tuple[int, str, str] | None:
    """(position, character, what it is) of the first character `value` must not contain, or None."""
    if value.isprintable():  # C speed; false for every forbidden category (and for some allowed ones)
        return None
    for position, char in enumerate(value):
        what = FORBIDDEN_CATEGORIES.get(unicodedata.category(char))
        if what is not None:
            return position, char, what
    return None  # only allowed non-printables (e.g. U+00A0 no-break space, private use, unassigned)


def check_identifier(
    name: str, value: Any, *, required: bool = True, max_chars: int = MAX_IDENTIFIER_CHARS
) -> Rejection | None:
    """One identifier field: a non-empty string of at most `max_chars`, no forbidden character.
    With `required=False`, None is accepted (an empty string is not: leave the field out)."""
    if value is None or value == "":
        if required:
            return Rejection("missing_field", f"{name}: required field is missing or empty", name)
        if value is None:
            return None
        return Rejection("invalid_field", f"{name}: empty; leave it out (null) when there is none", name)
    return check_text(name, value, max_chars=max_chars)


def check_text(name: str, value: Any, *, max_chars: int) -> Rejection | None:
    """A string of at most `max_chars` without a forbidden character (empty allowed)."""
    if not isinstance(value, str):
        return Rejection("invalid_field", f"{name}: expected a string, got {type(value).__name__}", name)
    if len(value) > max_chars:
        return Rejection("invalid_field", f"{name}: longer than {max_chars} characters ({len(value)})", name)
    found = forbidden_character(value)
    if found is not None:
        position, char, what = found
        return Rejection(
            "invalid_field", f"{name}: contains {what} (U+{ord(char):04X}) at position {position}", name
        )
    return None


def check_properties(properties: Any) -> Rejection | None:
    """Property names follow the identifier rule; values may be longer (1,024 characters) or empty."""
    if not properties:
        return None
    if not isinstance(properties, Mapping):
        kind = type(properties).__name__
        return Rejection("invalid_field", f"properties: expected a map of strings, got {kind}", "properties")
    for key, value in properties.items():
        if key == "":
            return Rejection("invalid_field", "properties: a property name is empty", "properties")
        rejection = check_text(f"properties name {key!r:.60}", key, max_chars=MAX_IDENTIFIER_CHARS)
        if rejection is not None:
            return Rejection(rejection.reason, rejection.message, "properties")
        rejection = check_text(f"properties.{key}", value, max_chars=MAX_PROPERTY_VALUE_CHARS)
        if rejection is not None:
            return rejection
    return None


def _plain(value: Any, max_chars: int = MAX_IDENTIFIER_CHARS) -> bool:
    """The common case, at C speed: a non-empty printable string within the cap."""
    return type(value) is str and 0 < len(value) <= max_chars and value.isprintable()


def check_ids(datum: Mapping[str, Any]) -> Rejection | None:
    """Every identifier of a usage event, and its properties: the part of `check_shape` that the
    SDK, `metergate emit`, the metering worker and rating's decode share."""
    get = datum.get
    subject_id, source, properties = get("subject_id"), get("source"), get("properties")
    if (
        _plain(get("event_id"))
        and _plain(get("customer_id"))
        and _plain(get("meter"))
        and (subject_id is None or _plain(subject_id))
        and (source is None or source == "" or _plain(source))
        and (
            not properties
            or (
                isinstance(properties, Mapping)
                and all(
                    _plain(key) and (value == "" or _plain(value, MAX_PROPERTY_VALUE_CHARS))
                    for key, value in properties.items()
                )
            )
        )
    ):
        return None  # every field passes (each rule below accepts what `_plain` accepts)
    return _check_ids_one_by_one(datum)


def _check_ids_one_by_one(datum: Mapping[str, Any]) -> Rejection | None:
    """`check_ids` field by field, naming the first that fails."""
    for name in ("event_id", "customer_id", "meter"):
        rejection = check_identifier(name, datum.get(name))
        if rejection is not None:
            return rejection
    rejection = check_identifier("subject_id", datum.get("subject_id"), required=False)
    if rejection is not None:
        return rejection
    source = datum.get("source")
    if source is not None:  # free text naming the producer; empty is as good as none
        rejection = check_text("source", source, max_chars=MAX_IDENTIFIER_CHARS)
        if rejection is not None:
            return rejection
    return check_properties(datum.get("properties"))


def check_shape(datum: dict[str, Any]) -> Rejection | None:
    """Rules of the event alone (no catalog, no clock)."""
    rejection = check_ids(datum)
    if rejection is not None:
        return rejection
    quantity = datum.get("quantity")
    if not isinstance(quantity, Decimal):
        return Rejection("invalid_quantity", f"quantity: expected a decimal, got {quantity!r}")
    if not quantity.is_finite():
        return Rejection("invalid_quantity", f"quantity: must be a finite number, got {quantity}")
    if quantity < _ZERO:
        return Rejection("invalid_quantity", f"quantity: must be >= 0, got {quantity}")
    if quantity.adjusted() > _MAX_ADJUSTED:
        return Rejection("invalid_quantity", f"quantity: must be below 10^29, got {quantity:.6E}")
    if quantity != QUANTITY_CONTEXT.quantize(quantity, _SCALE_STEP):  # (as_tuple() would cost 4x as much)
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
