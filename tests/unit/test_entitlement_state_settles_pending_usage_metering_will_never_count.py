"""Pending usage that metering will never count (a duplicate receipt or a dead letter names its
partition and offset) leaves the pending figure exactly then, and never comes back: not from a
late delivery report, not from the checkpoint."""

from __future__ import annotations

import pytest

from metergate.entitlements import checkpoint
from tests.unit.test_entitlement_state_pending_usage_and_checkpoint import (
    PERIOD,
    START,
    agg,
    pending,
    state,
    usage,
)

pytestmark = pytest.mark.unit
KEY = ("acme", "requests", START)


def test_a_verdict_drops_only_the_event_at_its_position():
    s = state()
    s.apply_aggregate(agg(40, 10))
    assert s.add_pending("acme", "requests", PERIOD, pending("a", 10, 3))
    assert s.add_pending("acme", "requests", PERIOD, pending("b", 11, 4))
    assert s.add_pending("acme", "requests", PERIOD, pending("c", 12, 5))
    assert usage(s) == 52
    assert s.settle(2, 11)  # metering: b is a duplicate (or rejected)
    assert usage(s) == 48 and [p.event_id for p in s.pending[KEY]] == ["a", "c"]
    assert not s.settle(2, 11) and not s.settle(3, 10)  # again, or another partition: nothing
    assert usage(s) == 48
    s.apply_aggregate(agg(48, 13))  # a and c counted; b never
    assert usage(s) == 48 and s.pending == {} and s._pending_at == {}


def test_a_verdict_before_the_delivery_report_keeps_the_event_out():
    s = state()
    assert not s.settle(2, 7)
    assert s.add_pending("acme", "requests", PERIOD, pending("late", 7, 9)) is False
    assert usage(s) == 0 and s.pending == {}
    assert s.was_reported("late")  # still refused as a repeat here


def test_a_settled_event_is_not_restored_from_the_checkpoint(tmp_path):
    s = state()
    s.add_pending("acme", "requests", PERIOD, pending("a", 3, 2))
    s.add_pending("acme", "requests", PERIOD, pending("b", 4, 5))
    path = tmp_path / "checkpoint.json"
    checkpoint.write(path, checkpoint.dump(s, None))
    restored = state()
    restored.settle(2, 4)  # the follower reads the verdict; the checkpoint still lists b
    checkpoint.load(path, restored)
    assert usage(restored) == 2 and [p.event_id for p in restored.pending[KEY]] == ["a"]
