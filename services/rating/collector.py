"""Cyclic garbage collection for the rating process: collections that walk only the newest objects.

CPython's cyclic collector periodically walks *every* live container object. The rating process
keeps hundreds of thousands of them (the line cache, the entitlement snapshots), so each full
collection paused it for ~0.3 s, 3.1 s of an 18.4 s `ops/bench_rating` run. Nearly everything it
frees is freed by reference counting anyway: lines, batches and rows form no cycles.

So after each batch, what survived it is frozen (`gc.freeze()`: moved to a generation that is never
scanned, while reference counting still frees it). Collections then walk only what the current
batch allocated. Every `full_interval_s`, everything is unfrozen and collected once, so a cycle that
became garbage after it was frozen is reclaimed then: a bounded delay, not a leak.

Process-wide, so only the process entry point (`main.run()`) and the benchmark install it; tests
that run consumers inside pytest keep the default collector.
"""

from __future__ import annotations

import gc
import time


class GcPolicy:
    def __init__(self, full_interval_s: float = 300.0, young_threshold: int = 1_000_000) -> None:
        self.full_interval_s = full_interval_s
        self._thresholds = gc.get_threshold()
        # a batch allocates a few hundred thousand short-lived containers (tuples, dicts, rows),
        # nearly all freed by reference counting, and what survives it is frozen after it (which
        # restarts the count): collecting the youngest generation only past 1,000,000 net new
        # containers means a batch of the default size triggers none. At 100,000 (and 700 before),
        # ops/bench_rating's young collections found 3,505 objects in 240 runs and held the
        # process ~2.5 us per update (measured on the shared 2-core machine)
        gc.set_threshold(young_threshold, *self._thresholds[1:])
        self._next_full = 0.0  # the first call (the consumer's, after start-up) collects everything once

    def after_batch(self) -> None:
        now = time.monotonic()
        if now >= self._next_full:
            gc.unfreeze()
            gc.collect()
            self._next_full = now + self.full_interval_s
        gc.freeze()

    def close(self) -> None:
        gc.unfreeze()
        gc.set_threshold(*self._thresholds)
