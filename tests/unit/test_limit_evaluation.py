"""Which limit events a usage figure calls for, each once per period."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metergate.domain.limits import due, first_due, mark, watches
from metergate.domain.records import (
    Enforcement,
    FeatureEntitlement,
    FeatureKind,
    LimitKind,
    Pricing,
    PricingModel,
)

pytestmark = pytest.mark.unit


def feature(**fields) -> FeatureEntitlement:
    return FeatureEntitlement(feature="api_calls", kind=FeatureKind.METERED, meter="api_calls", **fields)


HARD = feature(limit=Decimal(1000), enforcement=Enforcement.HARD, thresholds=(80, 90, 100))


def kinds(items):
    return [(item.kind, item.threshold) for item in items]


def test_thresholds_and_the_hard_limit_at_their_exact_figures():
    assert due(HARD, Decimal(799), set()) == []
    assert kinds(due(HARD, Decimal(800), set())) == [(LimitKind.THRESHOLD_CROSSED, 80)]
    assert kinds(due(HARD, Decimal(900), {mark("api_calls", LimitKind.THRESHOLD_CROSSED, 80)})) == [
        (LimitKind.THRESHOLD_CROSSED, 90)
    ]
    assert kinds(due(HARD, Decimal(1000), set())) == [
        (LimitKind.THRESHOLD_CROSSED, 80),
        (LimitKind.THRESHOLD_CROSSED, 90),
        (LimitKind.THRESHOLD_CROSSED, 100),
        (LimitKind.LIMIT_REACHED, None),
    ]
    assert kinds(due(HARD, Decimal("1000.000000001"), set()))[-1] == (LimitKind.HARD_LIMIT_EXCEEDED, None)


def test_soft_limit_signals_reached_but_never_hard_exceeded():
    soft = feature(limit=Decimal(10), enforcement=Enforcement.SOFT)
    assert kinds(due(soft, Decimal(50), set())) == [(LimitKind.LIMIT_REACHED, None)]


def test_overage_starts_past_the_included_units_of_a_priced_feature():
    priced = feature(
        included=Decimal(100), pricing=Pricing(model=PricingModel.PER_UNIT, unit_price=Decimal("0.01"))
    )
    assert due(priced, Decimal(100), set()) == []
    assert kinds(due(priced, Decimal("100.5"), set())) == [(LimitKind.OVERAGE_STARTED, None)]
    unpriced = feature(included=Decimal(100))
    assert not watches(unpriced)
    assert due(unpriced, Decimal(1000), set()) == []


def test_marks_suppress_what_was_already_sent():
    sent = {item.mark for item in due(HARD, Decimal(2000), set())}
    assert due(HARD, Decimal(5000), sent) == []


def test_disabled_unmetered_and_zero_usage_call_for_nothing():
    assert due(feature(limit=Decimal(0), enabled=False), Decimal(5), set()) == []
    assert due(FeatureEntitlement(feature="sso", kind=FeatureKind.BOOLEAN), Decimal(5), set()) == []
    assert due(HARD, Decimal(0), set()) == []


@given(
    usages=st.lists(
        st.decimals(min_value=0, max_value=3000, places=2, allow_nan=False), min_size=1, max_size=30
    )
)
def test_a_rising_usage_sends_each_event_once_as_if_evaluated_at_the_end(usages):
    running = Decimal(0)
    sent: list[str] = []
    for step in usages:
        running += step
        new = due(HARD, running, set(sent))
        sent.extend(item.mark for item in new)
    assert len(sent) == len(set(sent))
    assert sorted(sent) == sorted(item.mark for item in due(HARD, running, set()))


LIMITED = st.builds(
    lambda limit, included, hard, thresholds, priced: feature(
        limit=limit,
        included=included,
        enforcement=Enforcement.HARD if hard else Enforcement.SOFT,
        thresholds=tuple(thresholds),
        pricing=Pricing(model=PricingModel.PER_UNIT, unit_price=Decimal(1)) if priced else Pricing(),
    ),
    st.one_of(st.none(), st.decimals(min_value=0, max_value=10_000, places=2)),
    st.decimals(min_value=0, max_value=10_000, places=2),
    st.booleans(),
    st.lists(st.integers(min_value=1, max_value=150), max_size=4),
    st.booleans(),
)


@given(LIMITED, st.decimals(min_value=0, max_value=20_000, places=3), st.integers(min_value=0, max_value=6))
def test_nothing_is_due_below_first_due(item, usage, how_many_sent):
    sent = {entry.mark for entry in due(item, Decimal(10**9), set())[:how_many_sent]}
    floor = first_due(item, sent)
    if floor is None or usage < floor:
        assert due(item, usage, sent) == []
    else:
        assert due(item, floor, sent) != [] or due(item, floor + Decimal("0.001"), sent) != []
