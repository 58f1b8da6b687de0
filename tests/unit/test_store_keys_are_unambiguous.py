"""Every `|`-separated key names one tuple of ids: `a|b` + `c` and `a` + `b|c` are two keys."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metergate.domain.ledger import depletion_event_id, grant_expiry_key
from metergate.domain.pricing import ChargeType, line_key
from metergate.domain.records import LimitKind, aggregate_key, key_part, limit_event_id

pytestmark = pytest.mark.unit

MARCH = datetime(2026, 3, 1, tzinfo=UTC)
ids = st.text(alphabet=st.sampled_from("ab|\\"), min_size=1, max_size=6)


def split_key(key: str) -> list[str]:
    """Independent decoder: split on unescaped `|`, then unescape each part."""
    parts, current, escaped = [], [], False
    for char in key:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "|":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    assert not escaped
    parts.append("".join(current))
    return parts


def test_the_collisions_of_the_issue_are_gone():
    assert aggregate_key("a|b", "c", MARCH) != aggregate_key("a", "b|c", MARCH)
    assert line_key("a|b", "s", "f", MARCH, ChargeType.USAGE) != line_key(
        "a", "b|s", "f", MARCH, ChargeType.USAGE
    )
    assert limit_event_id("a|b", "f", MARCH, LimitKind.LIMIT_REACHED, None) != limit_event_id(
        "a", "b|f", MARCH, LimitKind.LIMIT_REACHED, None
    )
    assert aggregate_key("a\\", "|c", MARCH) != aggregate_key("a\\|", "c", MARCH)


def test_ids_without_separator_or_backslash_keep_their_stored_keys():
    assert aggregate_key("acme", "api_calls", MARCH) == "acme|api_calls|2026-03-01T00:00:00+00:00"
    assert (
        line_key("acme", "sub-1", "api", MARCH, ChargeType.USAGE)
        == "acme|sub-1|api|2026-03-01T00:00:00+00:00|usage"
    )
    assert depletion_event_id("acme", "USD", 2) == "acme|credits|USD|credits_depleted|2"
    assert grant_expiry_key("trial") == "expiry:trial"


@given(ids, ids)
def test_aggregate_key_decodes_back_to_its_parts(customer, meter):
    assert split_key(aggregate_key(customer, meter, MARCH)) == [customer, meter, MARCH.isoformat()]


@given(ids, ids, ids)
def test_line_key_decodes_back_to_its_parts(customer, subscription, feature):
    key = line_key(customer, subscription, feature, MARCH, ChargeType.USAGE)
    assert split_key(key) == [customer, subscription, feature, MARCH.isoformat(), "usage"]


@given(ids)
def test_key_part_round_trips(value):
    assert split_key(key_part(value)) == [value]


@given(ids, ids)
def test_metering_names_a_total_as_the_records_do(customer, meter):
    from metergate.domain.records import aggregate_key_from_iso

    assert aggregate_key_from_iso(customer, meter, MARCH.isoformat()) == aggregate_key(customer, meter, MARCH)


@given(ids, ids, ids, ids)
def test_metering_dedup_keys_of_two_id_pairs_differ(customer_a, event_a, customer_b, event_b):
    from metergate_services.metering.store import dedup_key

    if (customer_a, event_a) != (customer_b, event_b):
        assert dedup_key(customer_a, event_a) != dedup_key(customer_b, event_b)
    assert dedup_key("a", "b\x00c") != dedup_key("a\x00b", "c")
