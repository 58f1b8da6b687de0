"""Which billing period an event belongs to: anchors, month ends, leap years, millisecond boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metergate.domain.periods import Period, calendar_month, period_for
from metergate.domain.records import ResetPeriod

pytestmark = pytest.mark.unit

MS = timedelta(milliseconds=1)


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_no_subscription_means_the_calendar_month_utc():
    assert period_for(at(2024, 2, 10, 5), None, ResetPeriod.MONTHLY) == Period(at(2024, 2, 1), at(2024, 3, 1))
    assert calendar_month(at(2023, 12, 31, 23, 59, 59)) == Period(at(2023, 12, 1), at(2024, 1, 1))


def test_anchor_on_the_31st_clamps_to_february_end_in_a_leap_year_and_returns_to_the_31st():
    anchor = at(2024, 1, 31)
    assert period_for(at(2024, 2, 15), anchor, ResetPeriod.MONTHLY) == Period(
        at(2024, 1, 31), at(2024, 2, 29)
    )
    assert period_for(at(2024, 3, 1), anchor, ResetPeriod.MONTHLY) == Period(at(2024, 2, 29), at(2024, 3, 31))
    assert period_for(at(2024, 4, 30, 12), anchor, ResetPeriod.MONTHLY) == Period(
        at(2024, 4, 30), at(2024, 5, 31)
    )


def test_anchor_on_the_31st_clamps_to_february_28_in_a_common_year():
    anchor = at(2024, 1, 31)
    assert period_for(at(2025, 2, 27), anchor, ResetPeriod.MONTHLY) == Period(
        at(2025, 1, 31), at(2025, 2, 28)
    )
    assert period_for(at(2025, 2, 28), anchor, ResetPeriod.MONTHLY) == Period(
        at(2025, 2, 28), at(2025, 3, 31)
    )


def test_anchor_on_the_29th_and_30th_in_february():
    assert period_for(at(2023, 2, 28), at(2023, 1, 29), ResetPeriod.MONTHLY).start == at(2023, 2, 28)
    assert period_for(at(2023, 3, 29), at(2023, 1, 30), ResetPeriod.MONTHLY) == Period(
        at(2023, 2, 28), at(2023, 3, 30)
    )


def test_boundaries_to_the_millisecond():
    anchor = at(2024, 1, 15, 9, 30)
    boundary = at(2024, 2, 15, 9, 30)
    assert period_for(boundary - MS, anchor, ResetPeriod.MONTHLY).end == boundary
    assert period_for(boundary, anchor, ResetPeriod.MONTHLY).start == boundary
    assert period_for(at(2024, 3, 1) - MS, None, ResetPeriod.MONTHLY).start == at(2024, 2, 1)
    assert period_for(at(2024, 3, 1), None, ResetPeriod.MONTHLY).start == at(2024, 3, 1)


def test_sub_millisecond_parts_are_dropped_as_on_the_wire():
    anchor = at(2024, 1, 15)
    just_before = at(2024, 2, 15) - timedelta(microseconds=1)
    assert period_for(just_before, anchor, ResetPeriod.MONTHLY).start == at(2024, 1, 15)


def test_daily_periods_start_at_the_anchor_time_of_day():
    anchor = at(2024, 3, 1, 6)
    assert period_for(at(2024, 3, 10, 5, 59, 59), anchor, ResetPeriod.DAILY) == Period(
        at(2024, 3, 9, 6), at(2024, 3, 10, 6)
    )
    assert period_for(at(2024, 3, 10, 6), anchor, ResetPeriod.DAILY) == Period(
        at(2024, 3, 10, 6), at(2024, 3, 11, 6)
    )


def test_yearly_anchor_on_february_29():
    anchor = at(2024, 2, 29)
    assert period_for(at(2025, 6, 1), anchor, ResetPeriod.YEARLY) == Period(at(2025, 2, 28), at(2026, 2, 28))
    assert period_for(at(2028, 2, 29), anchor, ResetPeriod.YEARLY) == Period(at(2028, 2, 29), at(2029, 2, 28))
    assert period_for(at(2028, 2, 28), anchor, ResetPeriod.YEARLY) == Period(at(2027, 2, 28), at(2028, 2, 29))


def test_events_before_the_anchor_fall_into_earlier_periods():
    assert period_for(at(2024, 1, 10), at(2024, 3, 31), ResetPeriod.MONTHLY) == Period(
        at(2023, 12, 31), at(2024, 1, 31)
    )


def test_other_timezones_are_normalised_to_utc():
    plus_two = datetime(2024, 3, 1, 1, 0, tzinfo=UTC).astimezone(
        __import__("datetime").timezone(timedelta(hours=2))
    )
    assert period_for(plus_two, None, ResetPeriod.MONTHLY).start == at(2024, 3, 1)


def test_a_naive_timestamp_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        period_for(datetime(2024, 1, 1), None, ResetPeriod.MONTHLY)


def test_late_means_closed_for_longer_than_the_grace():
    period = Period(at(2024, 1, 1), at(2024, 2, 1))
    assert not period.closed_before(at(2024, 2, 2), timedelta(days=1))
    assert period.closed_before(at(2024, 2, 2) + MS, timedelta(days=1))


moments = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC))
resets = st.sampled_from(list(ResetPeriod))


@given(moment=moments, anchor=st.none() | moments, reset=resets)
def test_every_moment_lies_in_its_period_and_periods_tile_the_timeline(moment, anchor, reset):
    period = period_for(moment, anchor, reset)
    truncated = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    assert truncated in period
    assert period.start < period.end
    assert period_for(period.start, anchor, reset) == period
    assert period_for(period.end, anchor, reset).start == period.end
    assert period_for(period.start - MS, anchor, reset).end == period.start


@given(moment=moments, anchor=moments)
def test_monthly_periods_start_on_the_anchor_day_or_the_month_end(moment, anchor):
    period = period_for(moment, anchor, ResetPeriod.MONTHLY)
    start = period.start
    next_month = (start.replace(day=1) + timedelta(days=32)).replace(day=1)
    month_end = (next_month - timedelta(days=1)).day
    assert start.day == min(anchor.day, month_end)
    assert (start.hour, start.minute, start.second) == (anchor.hour, anchor.minute, anchor.second)
