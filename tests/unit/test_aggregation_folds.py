"""How events fold into running totals: SUM, COUNT, MAX, LATEST, UNIQUE_COUNT."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metergate.domain.aggregation import RunningTotal
from metergate.domain.records import Aggregation

pytestmark = pytest.mark.unit

quantities = st.decimals(min_value=0, max_value=10**9, places=3, allow_nan=False, allow_infinity=False)
events = st.lists(st.tuples(quantities, st.integers(0, 10**6), st.sampled_from("abcdefg")), max_size=40)


def fold_all(aggregation: Aggregation, items) -> RunningTotal:
    total = RunningTotal(aggregation)
    for index, (quantity, ms, unique) in enumerate(items):
        total.fold(quantity, ms, f"e{index}", unique)
    return total


def test_each_aggregation_on_a_small_stream():
    items = [(Decimal("2.5"), 10, "u1"), (Decimal(7), 30, "u2"), (Decimal(1), 20, "u1")]
    assert fold_all(Aggregation.SUM, items).value == Decimal("10.5")
    assert fold_all(Aggregation.COUNT, items).value == 3
    assert fold_all(Aggregation.MAX, items).value == 7
    assert fold_all(Aggregation.LATEST, items).value == 7  # event time 30 is the latest, not the last applied
    assert fold_all(Aggregation.UNIQUE_COUNT, items).value == 2


def test_latest_ties_go_to_the_event_applied_last():
    items = [(Decimal(1), 10, "a"), (Decimal(2), 10, "a")]
    total = fold_all(Aggregation.LATEST, items)
    assert total.value == 2
    assert total.last_event_id == "e1"


def test_unique_count_needs_the_property():
    with pytest.raises(ValueError, match="unique property"):
        RunningTotal(Aggregation.UNIQUE_COUNT).fold(Decimal(1), 1, "e", None)


@given(
    items=events,
    aggregation=st.sampled_from(
        [Aggregation.SUM, Aggregation.COUNT, Aggregation.MAX, Aggregation.UNIQUE_COUNT]
    ),
    data=st.data(),
)
def test_order_does_not_matter_for_sum_count_max_unique(items, aggregation, data):
    shuffled = data.draw(st.permutations(items))
    assert fold_all(aggregation, items).value == fold_all(aggregation, shuffled).value


@given(items=events)
def test_sum_and_count_equal_an_independent_computation(items):
    assert fold_all(Aggregation.SUM, items).value == sum((q for q, _, _ in items), Decimal(0))
    assert fold_all(Aggregation.COUNT, items).value == len(items)
    assert fold_all(Aggregation.COUNT, items).event_count == len(items)


@given(items=events, aggregation=st.sampled_from(list(Aggregation)))
def test_state_round_trips_exactly(items, aggregation):
    total = fold_all(aggregation, items)
    total.version, total.applied_offset, total.late = 3, 41, True
    total.emitted.add("api_calls|limit_reached|")
    assert RunningTotal.from_state(total.to_state()) == total
    assert total.copy() == total


def test_sums_of_large_quantities_stay_exact():
    total = RunningTotal(Aggregation.SUM)
    total.fold(Decimal("12345678901234567890.123456789"), 1, "a")  # 29 digits: past the default 28
    total.fold(Decimal("0.000000002"), 2, "b")
    assert total.value == Decimal("12345678901234567890.123456791")
