"""First copy counts, later copies are duplicates, a re-read first copy is a replay."""

from __future__ import annotations

import pytest

from metergate.domain.dedup import FirstSeen, Verdict, classify, expired, outside_window

pytestmark = pytest.mark.unit

DAY_MS = 86_400_000


def test_first_copy_later_copy_and_replay():
    seen = FirstSeen(partition=2, offset=100, event_ms=5)
    assert classify(None, 2, 100) is Verdict.FIRST
    assert classify(seen, 2, 100) is Verdict.REPLAY
    assert classify(seen, 2, 101) is Verdict.DUPLICATE
    assert classify(seen, 3, 100) is Verdict.DUPLICATE


def test_window_in_event_time():
    now = 100 * DAY_MS
    window = 35 * DAY_MS
    assert not outside_window(now - window, now, window)
    assert outside_window(now - window - 1, now, window)
    assert expired(FirstSeen(0, 0, now - window - 1), now, window)
    assert not expired(FirstSeen(0, 0, now - window), now, window)
