"""The records that travel on metergate's topics, as frozen models (pure: no I/O).

Each model has an Avro schema of the same name in `schemas/` (the wire format); the codec in
`metergate.wire.codec` converts between the two. Quantities and money are `Decimal`, never float;
timestamps are timezone-aware UTC datetimes with millisecond precision (Avro timestamp-millis).
Evolve a model only by adding a field with a default, mirrored in its `schemas/*.avsc`, so records
already on the topics still decode.

Validation of a usage event lives here, so the SDK, `metergate emit` and the metering worker apply
the same rules and report the same field names.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from decimal import Context, Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from metergate.errors import InvalidEvent

#: Quantities travel as Avro decimal(38, 9): at most 9 digits after the point, 29 before.
QUANTITY_SCALE = 9
QUANTITY_PRECISION = 38
#: arithmetic on quantities that never rounds: the default context keeps 28 digits, a decimal(38, 9)
#: has 38, and sums of them stay far below 80
QUANTITY_CONTEXT = Context(prec=80)
#: Prices travel as Avro decimal(38, 12) (a per-token price can be 0.000002).
PRICE_SCALE = 12
PRICE_PRECISION = 38
#: exact (built from an int: Decimal arithmetic in the default 28-digit context would round it to 1E+29)
MAX_QUANTITY = Decimal(10 ** (QUANTITY_PRECISION - QUANTITY_SCALE) - 1)

Identifier = Annotated[str, Field(min_length=1, max_length=256)]


def utc_millis(value: datetime) -> datetime:
    """Normalise an aware datetime to UTC, truncated to the millisecond (what Avro keeps)."""
    if value.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware (UTC), got a naive datetime")
    value = value.astimezone(UTC)
    return value.replace(microsecond=(value.microsecond // 1000) * 1000)


def check_decimal(value: Decimal, *, name: str, scale: int, precision: int, allow_negative: bool) -> Decimal:
    """Reject NaN, infinities, too many digits and (unless allowed) negatives; never round."""
    if not value.is_finite():
        raise ValueError(f"{name} must be a finite number, got {value}")
    if not allow_negative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -scale and value != value.quantize(Decimal(1).scaleb(-scale)):
        raise ValueError(f"{name} has more than {scale} digits after the point: {value}")
    limit = Decimal(10) ** (precision - scale)
    if abs(value) >= limit:
        raise ValueError(f"{name} must be below 10^{precision - scale}, got {value}")
    return value


def to_decimal(value: Any, *, name: str) -> Decimal:
    """Accept Decimal, int or a numeric string; refuse float (binary fractions are not money)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got a boolean")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        raise ValueError(f"{name} must be a Decimal, int or numeric string, not float ({value!r})")
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except ArithmeticError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    raise ValueError(f"{name} must be a number, got {type(value).__name__}")


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class UsageEvent(Record):
    """One unit of usage, emitted by a product service. Kafka key = customer_id."""

    event_id: Identifier
    customer_id: Identifier
    subject_id: Identifier | None = None
    meter: Identifier
    quantity: Decimal
    timestamp: datetime
    properties: dict[str, str] = Field(default_factory=dict)
    source: str | None = None

    @field_validator("quantity", mode="before")
    @classmethod
    def _quantity(cls, value: Any) -> Decimal:
        quantity = to_decimal(value, name="quantity")
        return check_decimal(
            quantity,
            name="quantity",
            scale=QUANTITY_SCALE,
            precision=QUANTITY_PRECISION,
            allow_negative=False,
        )

    @field_validator("timestamp")
    @classmethod
    def _timestamp(cls, value: datetime) -> datetime:
        return utc_millis(value)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> UsageEvent:
        """Validate untrusted input; raise InvalidEvent naming the first bad field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise invalid_event_from(exc) from None


def invalid_event_from(exc: ValidationError) -> InvalidEvent:
    """Turn pydantic's error list into one InvalidEvent naming the field and the reason."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "event"
    kind = first["type"]
    message = first["msg"].removeprefix("Value error, ").removeprefix(f"{field} ")
    if kind == "missing":
        reason = "missing_field"
        message = "required field is missing"
    elif kind == "extra_forbidden":
        reason = "unknown_field"
        message = "field is not part of UsageEvent"
    elif field == "quantity":
        reason = "invalid_quantity"
    elif field == "timestamp":
        reason = "invalid_timestamp"
    else:
        reason = "invalid_field"
    value = first.get("input")
    shown = "" if kind == "missing" or "got " in message else f" (got {value!r})"
    return InvalidEvent(f"{field}: {message}{shown}", reason=reason, field=field)


class Aggregation(enum.StrEnum):
    SUM = "SUM"
    COUNT = "COUNT"
    MAX = "MAX"
    LATEST = "LATEST"
    UNIQUE_COUNT = "UNIQUE_COUNT"


class ResetPeriod(enum.StrEnum):
    DAILY = "daily"
    MONTHLY = "monthly"
    YEARLY = "yearly"


class Enforcement(enum.StrEnum):
    HARD = "hard"
    SOFT = "soft"
    NONE = "none"


class FeatureKind(enum.StrEnum):
    BOOLEAN = "boolean"
    CONFIG = "config"
    METERED = "metered"


class PricingModel(enum.StrEnum):
    NONE = "none"
    PER_UNIT = "per_unit"
    PACKAGE = "package"
    GRADUATED = "graduated"
    VOLUME = "volume"


class LimitKind(enum.StrEnum):
    THRESHOLD_CROSSED = "threshold_crossed"
    LIMIT_REACHED = "limit_reached"
    HARD_LIMIT_EXCEEDED = "hard_limit_exceeded"
    OVERAGE_STARTED = "overage_started"
    CREDITS_DEPLETED = "credits_depleted"


class MeterDefinition(Record):
    """A meter of the catalog: how events of this meter fold into a running value.

    Published to the compacted `catalog.meters` topic, key = meter.
    """

    meter: Identifier
    aggregation: Aggregation
    unique_property: str | None = None  # UNIQUE_COUNT counts distinct values of this property
    unit: str | None = None
    description: str | None = None


class PriceTier(Record):
    up_to: Decimal | None  # None = no upper bound (the last tier)
    unit_price: Decimal
    flat_fee: Decimal = Decimal(0)


class Pricing(Record):
    """How usage beyond the included units is priced (see metergate.domain.pricing)."""

    model: PricingModel = PricingModel.NONE
    unit_price: Decimal = Decimal(0)  # per_unit, and package: price of one package
    package_size: Decimal = Decimal(1)  # package: units per started block
    tiers: tuple[PriceTier, ...] = ()  # graduated / volume


class FeatureEntitlement(Record):
    """One feature as resolved for one customer (plan + add-ons + contract overrides)."""

    feature: Identifier
    kind: FeatureKind
    enabled: bool = True
    config_value: str | None = None  # config features: e.g. "30" retention days
    meter: str | None = None  # metered features
    included: Decimal = Decimal(0)  # units included in the base fee
    limit: Decimal | None = None  # None = unlimited
    enforcement: Enforcement = Enforcement.NONE
    thresholds: tuple[int, ...] = ()  # percentages of the limit, e.g. (80, 90)
    pricing: Pricing = Pricing()


class AddOnFee(Record):
    """An add-on of a subscription as its snapshot carries it: the fee is per unit and period."""

    add_on: str
    quantity: int
    fee: Decimal  # per unit, per billing period (a price override applied)


class EntitlementSnapshot(Record):
    """A customer's resolved entitlements and subscription: compacted `entitlements.snapshots`, key `snapshot_key`."""

    customer_id: Identifier
    subscription_id: str | None = None  # None: no subscription (calendar month UTC, nothing priced)
    plan_key: str | None = None
    plan_version: int | None = None
    currency: str = "USD"
    billing_anchor: datetime | None = None
    reset_period: ResetPeriod = ResetPeriod.MONTHLY
    base_fee: Decimal = Decimal(0)
    features: tuple[FeatureEntitlement, ...] = ()
    version: int = 1
    updated_at: datetime
    # the interval these terms are in force, [valid_from, valid_to); None: unbounded on that side.
    # Written by the subscription outbox relay; a reader that ignores them applies the newest terms.
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    # the add-ons `base_fee` includes (base_fee = the plan's fee + each fee x quantity), so that a
    # reader bills each as a line of its own; a reader that ignores them bills base_fee whole
    add_on_fees: tuple[AddOnFee, ...] = ()

    def metered(self, meter: str) -> tuple[FeatureEntitlement, ...]:
        return tuple(f for f in self.features if f.kind is FeatureKind.METERED and f.meter == meter)


class TermsSegment(Record):
    """The part of a period's usage counted under one set of terms (a snapshot in force), in a
    `UsageAggregate`: `start` is the start of those terms' validity clipped to the period (the
    snapshot's `valid_from`, or the period start), `value` the events' value under the meter's own
    aggregation (SUM and COUNT: the segments add up to the total; MAX, LATEST and UNIQUE_COUNT: that
    aggregation over the segment's events alone)."""

    start: datetime
    subscription_id: str | None = None
    plan_key: str | None = None
    plan_version: int | None = None
    value: Decimal
    event_count: int


class UsageAggregate(Record):
    """A running total per (customer, meter, period): compacted `usage.aggregates`.

    Key = "customer_id|meter|period_start-iso". `version` = 1 + the input offset of the last event
    folded in, so one version always names the same events and the same value. Versions increase as
    usage is counted; after a worker crash an older version can be re-sent after a newer one (never
    with another value), so a consumer keeps the highest version it has seen and ignores the rest.

    `segments`: empty when every event of the period was counted under the aggregate's own terms
    (`subscription_id`, `plan_key`, `plan_version`: those in force at the last event folded in);
    otherwise the part counted under each terms in force, by start (`TermsSegment`), so rating
    prices each part under its own terms. Limits apply to `value`, the whole period's total.
    """

    customer_id: Identifier
    meter: Identifier
    aggregation: Aggregation
    period_start: datetime
    period_end: datetime
    value: Decimal
    event_count: int
    version: int
    last_event_at: datetime
    last_event_id: str
    late: bool = False
    subscription_id: str | None = None
    plan_key: str | None = None
    plan_version: int | None = None
    updated_at: datetime
    segments: tuple[TermsSegment, ...] = ()

    @property
    def key(self) -> str:
        return aggregate_key(self.customer_id, self.meter, self.period_start)


def key_part(value: str) -> str:
    """`value` as one part of a `|`-separated key: `\\` and `|` escaped with a backslash, so two
    different tuples of parts never make one key (customer `a|b` + meter `c` vs `a` + `b|c`).
    The identity for every id without `|` or `\\`, so stored keys of such ids do not change."""
    if "|" in value or "\\" in value:
        return value.replace("\\", "\\\\").replace("|", "\\|")
    return value


def aggregate_key(customer_id: str, meter: str, period_start: datetime) -> str:
    return aggregate_key_from_iso(customer_id, meter, period_start.astimezone(UTC).isoformat())


def aggregate_key_from_iso(customer_id: str, meter: str, period_start_iso: str) -> str:
    """`aggregate_key` with the period start already formatted (the metering hot path caches it)."""
    return f"{key_part(customer_id)}|{key_part(meter)}|{period_start_iso}"


def snapshot_key(snapshot: EntitlementSnapshot) -> str:
    """The key of `snapshot` on the compacted `entitlements.snapshots`.

    Terms without a date (a catalog file's) are keyed by the customer id: compaction keeps the
    newest. Dated terms are keyed by the customer and the start of their validity, so compaction
    keeps every dated version (the newest per start) and a reader starting from the beginning, or a
    replay, still finds the terms in force at any moment. Readers take the customer from the value;
    a tombstone on a dated key only prunes that version from the topic.
    """
    if snapshot.valid_from is None:
        return snapshot.customer_id
    return f"{key_part(snapshot.customer_id)}|{utc_millis(snapshot.valid_from).isoformat()}"


class LimitEvent(Record):
    """An entitlement signal for enforcement services: `usage.limits`, key = customer_id.

    `limit_event_id` is deterministic per (customer, feature, period, kind, threshold), so a consumer
    can deduplicate a re-sent signal by it.
    """

    limit_event_id: str
    kind: LimitKind
    customer_id: Identifier
    subject_id: str | None = None
    feature: Identifier
    meter: str | None = None
    period_start: datetime
    period_end: datetime
    threshold: int | None = None  # percent of the limit (threshold_crossed), else None
    usage: Decimal
    limit: Decimal | None = None
    event_id: str | None = None  # the usage event that crossed
    occurred_at: datetime


def limit_event_id(
    customer_id: str, feature: str, period_start: datetime, kind: LimitKind, threshold: int | None
) -> str:
    suffix = "" if threshold is None else f"|{threshold}"
    period = period_start.astimezone(UTC).isoformat()
    return f"{key_part(customer_id)}|{key_part(feature)}|{period}|{kind.value}{suffix}"


class KafkaPosition(Record):
    topic: str
    partition: int
    offset: int


class DuplicateReceipt(Record):
    """Proof that a copy of an already counted event arrived and was not counted: `usage.duplicates`."""

    customer_id: Identifier
    event_id: Identifier
    meter: str
    quantity: Decimal
    first_seen: KafkaPosition
    duplicate: KafkaPosition
    received_at: datetime


class DeadLetter(Record):
    """A record that could not be accepted, with why and the original bytes: `usage.dlq`."""

    reason: str  # stable code, e.g. "undecodable", "unknown_meter", "outside_dedup_window"
    message: str  # human explanation naming the field
    original_key: bytes | None
    original_value: bytes | None
    source: KafkaPosition
    service: str
    rejected_at: datetime


class CreditBalance(Record):
    """A customer's credit balance as committed in the ledger: `credits.balances` (compacted, key customer_id).

    `ledger_position` is the highest ledger entry id the balance includes; a reader keeps, per key, the
    record with the highest position (a relay that repeats an older one never rolls a balance back).
    """

    customer_id: Identifier
    currency: Identifier
    balance: Decimal
    ledger_position: int = Field(ge=0)
    as_of: datetime

    @field_validator("balance", mode="before")
    @classmethod
    def _balance(cls, value: Any) -> Decimal:
        return check_decimal(
            to_decimal(value, name="balance"),
            name="balance",
            scale=PRICE_SCALE,
            precision=PRICE_PRECISION,
            allow_negative=True,
        )

    @field_validator("as_of")
    @classmethod
    def _as_of(cls, value: datetime) -> datetime:
        return utc_millis(value)


def now_utc() -> datetime:
    return utc_millis(datetime.now(UTC))
