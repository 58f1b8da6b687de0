"""The rating process's garbage-collection policy: survivors frozen per batch, full collection on schedule."""

from __future__ import annotations

import gc

import pytest

from metergate_services.rating.collector import GcPolicy

pytestmark = pytest.mark.unit


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_survivors_are_frozen_and_frozen_cycles_are_reclaimed_by_the_next_full_collection() -> None:
    defaults = gc.get_threshold()
    collector = GcPolicy(full_interval_s=3600)
    try:
        assert gc.get_threshold()[0] == 1_000_000
        collector.after_batch()  # the first batch: full collection, then freeze
        assert gc.get_freeze_count() > 0
        garbage = Cycle()
        collector.after_batch()  # frozen while still referenced
        del garbage
        found: list[int] = []
        gc.callbacks.append(lambda phase, info: found.append(info["collected"]) if phase == "stop" else None)
        try:
            collector._next_full = 0.0  # the interval has passed
            collector.after_batch()
        finally:
            gc.callbacks.pop()
        assert sum(found) >= 1  # the cycle frozen while alive was collected once unfrozen
    finally:
        collector.close()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == defaults
