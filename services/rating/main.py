"""`metergate run rating`: the rating consumer as a process (settings from the environment).

Stops cleanly on SIGTERM/SIGINT: the batch in flight is finished and committed (or rolled back),
the consumer leaves its group, queued records are flushed. A SIGKILL loses nothing either: the
offsets live in PostgreSQL with the rows, so the restart redoes only uncommitted work.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

from metergate import metrics as metrics_endpoint
from metergate_services.rating.collector import GcPolicy
from metergate_services.rating.consumer import RatingConsumer
from metergate_services.rating.settings import RatingSettings

log = logging.getLogger("metergate.rating")


def run() -> None:
    settings = RatingSettings()
    settings.log.configure()
    metrics_endpoint.serve(settings.metrics.port)
    consumer = RatingConsumer(settings, gc_policy=GcPolicy())

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("rating: %s received; finishing the current batch", signal.Signals(signum).name)
        consumer.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.info(
            "rating: consuming %s as group %s into schema %s",
            consumer.topic,
            settings.group_id,
            settings.database.schema_name,
        )
        consumer.run()
        # one line per clean exit: the accounting invariant of this process (consumed = the rest)
        log.info(
            "rating: accounting %s",
            " ".join(f"{name}={count}" for name, count in consumer.accounting.items()),
        )
    finally:
        if consumer.stopping:
            # stopped by a signal: the work is done; a repeat of it while the interpreter exits
            # (which restores the default handlers) must not turn a clean exit into "killed"
            signal.pthread_sigmask(signal.SIG_BLOCK, previous)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    run()
