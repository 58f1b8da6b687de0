"""Deduplication by (customer_id, event_id) over a window (pure).

The first copy of an event counts; every later copy is a duplicate (a receipt is written, nothing
is counted). What makes this safe across crashes is that each entry remembers WHERE the first copy
was read (partition and offset): when a crashed worker re-reads a part of the log it had already
processed, the first copy meets its own entry, which is a replay (`REPLAY`: it may or may not be in
the totals yet; the total's own offset watermark decides), not a duplicate.

The window is in event time: an event whose timestamp is older than `now - window` is rejected
(`outside_dedup_window`), never counted blind, and an entry can be forgotten once the event time of
its first copy left the window, since every later copy is then rejected by that same rule.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class Verdict(enum.Enum):
    FIRST = "first"  # never seen: count it
    REPLAY = "replay"  # the first copy itself, read again after a crash or rebalance
    DUPLICATE = "duplicate"  # a later copy: receipt, not counted


class FirstSeen(NamedTuple):
    """Where the first copy of an event was read (a tuple: one is made per counted event)."""

    partition: int
    offset: int
    event_ms: int  # event time of the first copy, for expiry


def classify(seen: FirstSeen | None, partition: int, offset: int) -> Verdict:
    if seen is None:
        return Verdict.FIRST
    if seen.partition == partition and seen.offset == offset:
        return Verdict.REPLAY
    return Verdict.DUPLICATE


def outside_window(event_ms: int, now_ms: int, window_ms: int) -> bool:
    """An event too old to be deduplicated reliably."""
    return event_ms < now_ms - window_ms


def expired(seen: FirstSeen, now_ms: int, window_ms: int) -> bool:
    """An entry that no copy can match any more (every copy would be outside the window)."""
    return outside_window(seen.event_ms, now_ms, window_ms)
