"""The SDK's own checks (no broker): event_id required, the metering worker's id rule, murmur2."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from metergate.errors import InvalidEvent
from metergate.sdk.producer import USAGE_PRODUCER_CONFIG, build_event, parse_event

pytestmark = pytest.mark.unit

WHEN = datetime(2026, 3, 1, tzinfo=UTC)
FIELDS = {"customer_id": "acme", "meter": "api_calls", "quantity": 1, "timestamp": WHEN}


@pytest.mark.parametrize("event_id", [None, ""])
def test_an_event_without_its_event_id_is_refused_not_given_a_random_one(event_id):
    with pytest.raises(InvalidEvent) as error:
        build_event(event_id=event_id, **FIELDS)
    assert (error.value.field, error.value.reason) == ("event_id", "missing_field")
    with pytest.raises(InvalidEvent) as error:
        parse_event({**FIELDS, **({} if event_id is None else {"event_id": event_id})})
    assert (error.value.field, error.value.reason) == ("event_id", "missing_field")


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        (
            {"customer_id": "x\x00y"},
            "customer_id",
            "customer_id: contains a control character (U+0000) at position 1",
        ),
        ({"meter": "m" * 300}, "meter", "meter: longer than 256 characters (300)"),
        (
            {"subject_id": "\ufeffteam"},
            "subject_id",
            "subject_id: contains an invisible format character (U+FEFF) at position 0",
        ),
    ],
)
def test_ids_follow_the_metering_workers_rule(fields, field, message):
    with pytest.raises(InvalidEvent) as error:
        build_event(event_id="e-1", **{**FIELDS, **fields})
    assert (str(error.value), error.value.field, error.value.reason) == (message, field, "invalid_field")


def test_a_good_event_is_built_unchanged():
    event = build_event(event_id="e-1", **FIELDS)
    assert (event.event_id, event.customer_id, event.meter, event.timestamp) == (
        "e-1",
        "acme",
        "api_calls",
        WHEN,
    )


def test_usage_events_are_partitioned_with_murmur2():
    assert USAGE_PRODUCER_CONFIG == {"partitioner": "murmur2_random"}
