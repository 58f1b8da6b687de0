"""Billing periods: which period an event belongs to (pure).

Rules:

- A customer with a subscription has periods that start at its billing anchor and repeat every
  reset period (daily, monthly, yearly), at the anchor's time of day, in UTC.
- Monthly periods start on the anchor's day of month; in a month without that day (an anchor on the
  29th-31st) the period starts on the month's last day instead, and the next month returns to the
  anchor day: an anchor of Jan 31 gives Jan 31, Feb 28 (29 in a leap year), Mar 31, Apr 30, ...
  Yearly periods do the same for an anchor on Feb 29 (Feb 28 in other years).
- Without a subscription the period is the calendar month, UTC.
- Event time decides the period, never arrival time. Periods are half-open: [start, end).
- Events before the anchor belong to the periods before it, computed the same way.

All arithmetic is on whole milliseconds (what the wire keeps), so boundaries are exact.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from metergate.domain.records import ResetPeriod

_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime  # inclusive
    end: datetime  # exclusive

    def __contains__(self, moment: datetime) -> bool:
        return self.start <= moment < self.end

    def closed_before(self, moment: datetime, grace: timedelta) -> bool:
        """True when the period ended more than `grace` before `moment` (a late event)."""
        return self.end + grace < moment


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("period arithmetic needs timezone-aware datetimes")
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=(moment.microsecond // 1000) * 1000)


def _shift_months(anchor: datetime, months: int) -> datetime:
    """The anchor moved by whole months, its day clamped to the target month's length."""
    index = anchor.year * 12 + (anchor.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def calendar_month(moment: datetime) -> Period:
    moment = _utc(moment)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return Period(start, _shift_months(start, 1))


def period_for(moment: datetime, anchor: datetime | None, reset: ResetPeriod) -> Period:
    """The billing period containing `moment` for a subscription anchored at `anchor`."""
    moment = _utc(moment)
    if anchor is None:
        return calendar_month(moment)
    anchor = _utc(anchor)
    if reset is ResetPeriod.DAILY:
        days = (moment - anchor) // _DAY
        start = anchor + days * _DAY
        return Period(start, start + _DAY)
    step = 1 if reset is ResetPeriod.MONTHLY else 12
    # estimate the number of whole periods from the anchor, then correct by at most one each way
    months = (moment.year - anchor.year) * 12 + (moment.month - anchor.month)
    n = months // step
    while _shift_months(anchor, n * step) > moment:
        n -= 1
    while _shift_months(anchor, (n + 1) * step) <= moment:
        n += 1
    return Period(_shift_months(anchor, n * step), _shift_months(anchor, (n + 1) * step))
