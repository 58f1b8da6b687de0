"""Every schema round-trips its model exactly, and the codec rejects what it cannot read with a reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metergate.domain import records as r
from metergate.errors import DecodeError, InvalidEvent
from metergate.wire.codec import MODELS, codec, registry

pytestmark = pytest.mark.unit

WHEN = datetime(2026, 2, 28, 23, 59, 59, 999000, tzinfo=UTC)
POSITION = r.KafkaPosition(topic="usage.events", partition=3, offset=12345678901)

EXAMPLES: dict[str, r.Record] = {
    "UsageEvent": r.UsageEvent(
        event_id="e-1",
        customer_id="acme",
        subject_id="team-a",
        meter="tokens",
        quantity=Decimal("12.000000001"),
        timestamp=WHEN,
        properties={"model": "large", "region": "eu"},
        source="api",
    ),
    "MeterDefinition": r.MeterDefinition(
        meter="users", aggregation=r.Aggregation.UNIQUE_COUNT, unique_property="user_id", unit="user"
    ),
    "EntitlementSnapshot": r.EntitlementSnapshot(
        customer_id="acme",
        subscription_id="sub-1",
        plan_key="pro",
        plan_version=2,
        currency="EUR",
        billing_anchor=WHEN - timedelta(days=40),
        reset_period=r.ResetPeriod.MONTHLY,
        base_fee=Decimal("49.00"),
        features=(
            r.FeatureEntitlement(feature="sso", kind=r.FeatureKind.BOOLEAN),
            r.FeatureEntitlement(feature="retention_days", kind=r.FeatureKind.CONFIG, config_value="90"),
            r.FeatureEntitlement(
                feature="api_calls",
                kind=r.FeatureKind.METERED,
                meter="api_calls",
                included=Decimal(1000),
                limit=Decimal(5000),
                enforcement=r.Enforcement.HARD,
                thresholds=(80, 90),
                pricing=r.Pricing(
                    model=r.PricingModel.GRADUATED,
                    tiers=(
                        r.PriceTier(up_to=Decimal(1000), unit_price=Decimal("0.002")),
                        r.PriceTier(up_to=None, unit_price=Decimal("0.000001"), flat_fee=Decimal("5")),
                    ),
                ),
            ),
        ),
        version=7,
        updated_at=WHEN,
    ),
    "UsageAggregate": r.UsageAggregate(
        customer_id="acme",
        meter="tokens",
        aggregation=r.Aggregation.SUM,
        period_start=WHEN - timedelta(days=27),
        period_end=WHEN + timedelta(days=1),
        value=Decimal("123456789.123456789"),
        event_count=42,
        version=43,
        last_event_at=WHEN,
        last_event_id="e-42",
        late=True,
        subscription_id="sub-1",
        plan_key="pro",
        plan_version=2,
        updated_at=WHEN,
    ),
    "LimitEvent": r.LimitEvent(
        limit_event_id=r.limit_event_id("acme", "api_calls", WHEN, r.LimitKind.THRESHOLD_CROSSED, 80),
        kind=r.LimitKind.THRESHOLD_CROSSED,
        customer_id="acme",
        feature="api_calls",
        meter="api_calls",
        period_start=WHEN,
        period_end=WHEN + timedelta(days=31),
        threshold=80,
        usage=Decimal(4001),
        limit=Decimal(5000),
        event_id="e-9",
        occurred_at=WHEN,
    ),
    "DuplicateReceipt": r.DuplicateReceipt(
        customer_id="acme",
        event_id="e-1",
        meter="tokens",
        quantity=Decimal(1),
        first_seen=POSITION,
        duplicate=POSITION.model_copy(update={"offset": 12345678999}),
        received_at=WHEN,
    ),
    "DeadLetter": r.DeadLetter(
        reason="undecodable",
        message="not an Avro single-object record",
        original_key=b"acme",
        original_value=b"\x00\xffgarbage",
        source=POSITION,
        service="metering",
        rejected_at=WHEN,
    ),
    "CreditBalance": r.CreditBalance(
        customer_id="acme",
        currency="credits",
        balance=Decimal("-0.000000000001"),
        ledger_position=9007199254740993,
        as_of=WHEN,
    ),
}


def test_every_schema_has_an_example():
    assert set(EXAMPLES) == set(MODELS) == set(registry().current)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_round_trip(name):
    record = EXAMPLES[name]
    assert codec(type(record)).decode(codec(type(record)).encode(record)) == record


def test_every_schema_is_namespaced():
    assert all(schema.name.startswith("io.metergate.") for schema in registry().current.values())


identifiers = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)


@given(
    event_id=identifiers,
    customer=identifiers,
    meter=identifiers,
    quantity=st.decimals(
        min_value=0, max_value=Decimal("1e20"), places=9, allow_nan=False, allow_infinity=False
    ),
    millis=st.integers(min_value=0, max_value=4_102_444_800_000),
    properties=st.dictionaries(identifiers, st.text(max_size=20), max_size=4),
)
def test_any_valid_usage_event_round_trips(event_id, customer, meter, quantity, millis, properties):
    event = r.UsageEvent(
        event_id=event_id,
        customer_id=customer,
        meter=meter,
        quantity=quantity,
        timestamp=datetime.fromtimestamp(millis / 1000, UTC),
        properties=properties,
    )
    decoded = codec(r.UsageEvent).decode(codec(r.UsageEvent).encode(event))
    assert decoded == event
    assert decoded.quantity == quantity


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not_avro"),
        (b"plain json {}", "not_avro"),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "unknown_schema"),
        (codec(r.LimitEvent).encode(EXAMPLES["LimitEvent"]), "unexpected_schema"),
        (codec(r.UsageEvent).encode(EXAMPLES["UsageEvent"])[:14], "undecodable"),
    ],
)
def test_codec_rejects_with_a_reason(data, reason):
    with pytest.raises(DecodeError) as error:
        codec(r.UsageEvent).decode(data)
    assert error.value.reason == reason


@pytest.mark.parametrize(
    ("change", "field", "reason", "words"),
    [
        ({"quantity": "-1"}, "quantity", "invalid_quantity", "must be >= 0"),
        ({"quantity": "NaN"}, "quantity", "invalid_quantity", "finite"),
        ({"quantity": "Infinity"}, "quantity", "invalid_quantity", "finite"),
        ({"quantity": "1e40"}, "quantity", "invalid_quantity", "below 10^29"),
        ({"quantity": "0.0000000001"}, "quantity", "invalid_quantity", "more than 9 digits"),
        ({"quantity": 0.1}, "quantity", "invalid_quantity", "not float"),
        ({"quantity": "abc"}, "quantity", "invalid_quantity", "must be a number"),
        ({"timestamp": datetime(2026, 1, 1)}, "timestamp", "invalid_timestamp", "timezone-aware"),
        ({"event_id": ""}, "event_id", "invalid_field", "at least 1 character"),
        ({"meter": None}, "meter", "invalid_field", "valid string"),
        ({"colour": "red"}, "colour", "unknown_field", "not part of UsageEvent"),
    ],
)
def test_invalid_usage_event_names_field_and_reason(change, field, reason, words):
    data = {"event_id": "e", "customer_id": "c", "meter": "m", "quantity": "1", "timestamp": WHEN, **change}
    with pytest.raises(InvalidEvent) as error:
        r.UsageEvent.parse(data)
    assert (error.value.field, error.value.reason) == (field, reason)
    assert str(error.value).startswith(f"{field}: ")
    assert words in str(error.value)


def test_missing_field_is_named():
    with pytest.raises(InvalidEvent) as error:
        r.UsageEvent.parse({"event_id": "e", "meter": "m", "quantity": "1", "timestamp": WHEN})
    assert (error.value.field, error.value.reason) == ("customer_id", "missing_field")


def test_quantity_keeps_its_exact_decimal_value():
    event = r.UsageEvent.parse(
        {"event_id": "e", "customer_id": "c", "meter": "m", "quantity": "0.1", "timestamp": WHEN}
    )
    decoded = codec(r.UsageEvent).decode(codec(r.UsageEvent).encode(event))
    assert decoded.quantity == Decimal("0.1")
    assert isinstance(decoded.quantity, Decimal)


def test_timestamps_are_utc_millis():
    plus_two = datetime(2026, 3, 1, 1, 0, 0, 123456, tzinfo=UTC).astimezone(
        __import__("zoneinfo").ZoneInfo("Europe/Berlin")
    )
    event = r.UsageEvent(event_id="e", customer_id="c", meter="m", quantity=1, timestamp=plus_two)
    assert event.timestamp == datetime(2026, 3, 1, 1, 0, 0, 123000, tzinfo=UTC)
    assert event.timestamp.tzinfo is UTC
