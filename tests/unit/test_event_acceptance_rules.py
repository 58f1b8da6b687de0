"""What the metering worker accepts, and the reason code of each rejection."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from metergate.domain.records import Aggregation, MeterDefinition
from metergate.domain.usage import check_meter, check_shape, check_time

pytestmark = pytest.mark.unit

GOOD = {
    "event_id": "e1",
    "customer_id": "c1",
    "meter": "api_calls",
    "quantity": Decimal("1.5"),
    "timestamp": datetime(2024, 1, 1, tzinfo=UTC),
    "properties": {},
}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"event_id": ""}, "missing_field"),
        ({"customer_id": None}, "missing_field"),
        ({"meter": "m" * 257}, "invalid_field"),
        ({"quantity": Decimal(-1)}, "invalid_quantity"),
        ({"quantity": Decimal("NaN")}, "invalid_quantity"),
        ({"quantity": Decimal("Infinity")}, "invalid_quantity"),
        ({"quantity": Decimal("1e29")}, "invalid_quantity"),
        ({"quantity": Decimal("0.0000000001")}, "invalid_quantity"),
        ({"timestamp": datetime(2024, 1, 1)}, "invalid_timestamp"),
    ],
)
def test_shape_rejections(change, reason):
    rejection = check_shape({**GOOD, **change})
    assert rejection is not None and rejection.reason == reason


def test_a_good_event_passes():
    assert check_shape(GOOD) is None
    assert check_shape({**GOOD, "quantity": Decimal("1.000000000000")}) is None


def test_clock_rules():
    day = 86_400_000
    assert check_time(1000, 1000, future_skew_ms=60_000, window_ms=35 * day) is None
    assert check_time(1000 + 60_001, 1000, future_skew_ms=60_000, window_ms=day).reason == "future_timestamp"
    assert check_time(0, day + 1, future_skew_ms=0, window_ms=day).reason == "outside_dedup_window"


def test_catalog_rules():
    unique = MeterDefinition(meter="users", aggregation=Aggregation.UNIQUE_COUNT, unique_property="user_id")
    assert check_meter(GOOD, None).reason == "unknown_meter"
    assert check_meter(GOOD, unique).reason == "missing_property"
    assert check_meter({**GOOD, "properties": {"user_id": "u1"}}, unique) is None
