"""`metergate run metering`: the metering worker in the foreground, configured by the environment.

Stops cleanly on SIGTERM / SIGINT (Faust's worker finishes the batch in flight, its commit order
included, then leaves the group). After a SIGKILL, just start it again: the state directory's owner
lock is released by the kernel, a leftover RocksDB LOCK file is removed, and recovery brings the
state up to date from the changelog (see README.md).
"""

# ruff: noqa: E402  (the clock is read before the imports it measures)
from __future__ import annotations

import gc
import time

STARTED = time.monotonic()  # before the heavy imports: the start-up timeline counts from here
gc.disable()  # until start-up is done (`settle_memory`): what start-up allocates is mostly long-lived

import faulthandler
import logging
import os
import signal
import threading
from collections.abc import Callable

import faust

from metergate.metrics import serve
from metergate_services.metering.app import StartupTimeline, create_metering
from metergate_services.metering.settings import MeteringSettings

log = logging.getLogger(__name__)


#: start-up's memory is settled this long after start if no batch was committed by then
SETTLE_AFTER_S = 30.0


def settle_memory() -> Callable[[], None]:
    """Collect once, freeze what start-up allocated and turn the garbage collector on (the first
    call of the function returned; later calls do nothing). Done after the first committed batch
    rather than before joining the group: a full collection of start-up's objects costs ~0.3 s.

    The worker keeps many long-lived objects (cached totals, catalog snapshots); with CPython's
    default thresholds full collections walk them all every few thousand allocations (seen as
    batches taking 1 s instead of 0.1 s). Young objects are collected less often."""
    done = threading.Lock()

    def settle() -> None:
        if done.acquire(blocking=False):
            gc.collect()
            gc.freeze()
            gc.set_threshold(50_000, 50, 100)
            gc.enable()

    return settle


def run() -> None:
    settings = MeteringSettings()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: dump every thread's stack
    settings.log.configure()
    level = settings.log.log_level
    # aiokafka and Faust build many DEBUG/INFO records on the hot path; keep them quiet by default
    noisy_level = level if os.environ.get("METERGATE_METERING_FAUST_LOGS") else "WARNING"
    for noisy in ("aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(noisy_level)
    timeline = StartupTimeline(STARTED)
    timeline.mark("imported")
    serve(settings.metrics.port)
    metering = create_metering(settings, timeline)
    settle = settle_memory()
    timeline.after_first_commit.append(settle)
    fallback = threading.Timer(SETTLE_AFTER_S, settle)  # a worker with nothing to commit yet
    fallback.daemon = True
    fallback.start()
    worker = faust.Worker(
        metering.app, loglevel=level, quiet=True, redirect_stdouts=False, override_logging=False
    )
    try:
        worker.execute_from_commandline()
    finally:
        metering.close()


if __name__ == "__main__":
    run()
