"""What the metering worker accepts, and the reason code of each rejection."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metergate.domain.records import Aggregation, MeterDefinition
from metergate.domain.usage import check_identifier, check_meter, check_shape, check_time

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


# -- identifiers: length and characters (issue 12 §3) ----------------------------------------------

ID_FIELDS = ("event_id", "customer_id", "meter", "subject_id")


@pytest.mark.parametrize("name", ID_FIELDS)
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("x\x00y", "contains a control character (U+0000) at position 1"),
        ("\x1fab", "contains a control character (U+001F) at position 0"),
        ("ab\x7f", "contains a control character (U+007F) at position 2"),
        ("a\x85", "contains a control character (U+0085) at position 1"),
        ("a\tb", "contains a control character (U+0009) at position 1"),
        ("a\nb", "contains a control character (U+000A) at position 1"),
        ("a\ud800", "contains a lone surrogate (not encodable as UTF-8) (U+D800) at position 1"),
        ("\udfff", "contains a lone surrogate (not encodable as UTF-8) (U+DFFF) at position 0"),
        ("a\u200bb", "contains an invisible format character (U+200B) at position 1"),
        ("\ufeffa", "contains an invisible format character (U+FEFF) at position 0"),
        ("ab\u202e", "contains an invisible format character (U+202E) at position 2"),
        ("a\u2028", "contains a line separator (U+2028) at position 1"),
        ("a\u2029", "contains a paragraph separator (U+2029) at position 1"),
    ],
)
def test_an_id_with_a_forbidden_character_is_rejected_naming_field_character_and_position(
    name, value, message
):
    rejection = check_shape({**GOOD, name: value})
    assert rejection is not None
    assert (rejection.reason, rejection.message, rejection.field) == (
        "invalid_field",
        f"{name}: {message}",
        name,
    )


@pytest.mark.parametrize("name", ID_FIELDS)
@pytest.mark.parametrize(
    "value",
    ["a b", "é", "日本", "\U0001f600", "a\u00a0b", "\ue000", "x" * 256, "\U0001f600" * 256, "a|b", "a\\b"],
)
def test_printable_ids_up_to_256_characters_pass(name, value):
    assert check_shape({**GOOD, name: value}) is None


@pytest.mark.parametrize("name", ID_FIELDS)
def test_an_id_of_257_characters_is_rejected(name):
    rejection = check_shape({**GOOD, name: "x" * 257})
    assert rejection is not None
    assert (rejection.reason, rejection.message) == (
        "invalid_field",
        f"{name}: longer than 256 characters (257)",
    )
    rejection = check_shape({**GOOD, name: "x" * 10_240})  # a 10 KB id
    assert rejection is not None and rejection.message == f"{name}: longer than 256 characters (10240)"


def test_empty_subject_id_is_rejected_and_none_is_accepted():
    assert check_shape({**GOOD, "subject_id": None}) is None
    rejection = check_shape({**GOOD, "subject_id": ""})
    assert rejection is not None and rejection.reason == "invalid_field"
    assert rejection.message == "subject_id: empty; leave it out (null) when there is none"


@pytest.mark.parametrize("name", ["event_id", "customer_id", "meter"])
@pytest.mark.parametrize("value", ["", None])
def test_required_ids_missing_or_empty(name, value):
    rejection = check_shape({**GOOD, name: value})
    assert rejection is not None
    assert (rejection.reason, rejection.message) == (
        "missing_field",
        f"{name}: required field is missing or empty",
    )


def test_source_is_free_text_with_the_character_rule():
    assert check_shape({**GOOD, "source": ""}) is None
    assert check_shape({**GOOD, "source": "s" * 256}) is None
    assert check_shape({**GOOD, "source": "s" * 257}).message == "source: longer than 256 characters (257)"
    assert check_shape({**GOOD, "source": "a\x00"}).message == (
        "source: contains a control character (U+0000) at position 1"
    )


def test_property_names_and_values():
    assert check_shape({**GOOD, "properties": {"region": "", "model": "v" * 1024}}) is None
    cases = {
        "": "properties: a property name is empty",
        "k" * 257: f"properties name {('k' * 257)!r:.60}: longer than 256 characters (257)",
        "a\x00": "properties name 'a\\x00': contains a control character (U+0000) at position 1",
    }
    for key, message in cases.items():
        rejection = check_shape({**GOOD, "properties": {key: "v"}})
        assert rejection is not None and (rejection.reason, rejection.message) == ("invalid_field", message)
    rejection = check_shape({**GOOD, "properties": {"model": "v" * 1025}})
    assert rejection.message == "properties.model: longer than 1024 characters (1025)"
    rejection = check_shape({**GOOD, "properties": {"model": "gpt\x00"}})
    assert rejection.message == "properties.model: contains a control character (U+0000) at position 3"


FORBIDDEN = {"Cc", "Cs", "Cf", "Zl", "Zp"}


@given(st.text(alphabet=st.characters(codec=None), max_size=300))
def test_check_identifier_agrees_with_a_per_character_category_scan(value):
    # independent oracle: a plain scan of unicodedata categories, and the 256-character cap
    expected_bad = next(((i, c) for i, c in enumerate(value) if unicodedata.category(c) in FORBIDDEN), None)
    rejection = check_identifier("customer_id", value)
    if value == "":
        assert rejection is not None and rejection.reason == "missing_field"
    elif len(value) > 256:
        assert rejection is not None and "longer than 256" in rejection.message
    elif expected_bad is not None:
        position, char = expected_bad
        assert rejection is not None
        assert rejection.message.endswith(f"(U+{ord(char):04X}) at position {position}")
    else:
        assert rejection is None
        value.encode("utf-8")  # every accepted id is sendable


@given(st.integers(min_value=0, max_value=0x10FFFF))
def test_every_code_point_alone_is_judged_by_its_category(code_point):
    char = chr(code_point)
    rejection = check_identifier("meter", char)
    assert (rejection is not None) == (unicodedata.category(char) in FORBIDDEN)


ANY_TEXT = st.text(alphabet=st.characters(codec=None), max_size=260) | st.sampled_from(["", "a", "x" * 256])


@given(
    st.fixed_dictionaries(
        {"event_id": ANY_TEXT, "customer_id": ANY_TEXT, "meter": ANY_TEXT},
        optional={
            "subject_id": st.none() | ANY_TEXT,
            "source": st.none() | ANY_TEXT,
            "properties": st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=3),
        },
    )
)
def test_check_ids_fast_path_judges_as_the_field_by_field_rules(datum):
    from metergate.domain.usage import _check_ids_one_by_one, check_ids

    assert check_ids(datum) == _check_ids_one_by_one(datum)
