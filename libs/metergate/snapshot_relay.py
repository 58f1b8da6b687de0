"""The catalog outbox relay: due rows of PostgreSQL's `catalog_outbox` to `entitlements.snapshots`.

A subscription change writes its terms to the outbox in the change's own transaction
(`metergate.db.subscription_store.enqueue_snapshots`), one row per version, each available when
its version takes effect (a cancellation: a snapshot without subscription at its end). The relay
publishes what is due, so a scheduled change or a cancellation reaches the readers when it takes
effect, with nobody touching anything.

Commit order of one round (`relay_once`):

1. Lock the due rows (`FOR UPDATE SKIP LOCKED`: two relays never take the same row), in outbox
   order, inside one transaction.
2. Stamp each snapshot's version (the publication time in ms, above the customer's previous one) and
   record it on the row, still uncommitted.
3. Produce every record and flush: wait until Kafka acknowledged each one. A failure raises
   DeliveryError: the transaction rolls back, the rows stay due, the next round sends them again.
4. Commit: the rows are published.

A crash between 3 and 4 sends the same terms again on the next round, with a higher version:
readers keep the highest version per customer, so they end with the same terms.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from confluent_kafka import Producer
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from metergate.db import subscription_store as store
from metergate.domain.records import EntitlementSnapshot
from metergate.errors import DeliveryError
from metergate.kafka.producer import DeliveryTracker, make_producer, produce
from metergate.kafka.topics import Topics
from metergate.wire.codec import codec

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def relay_once(
    engine: Engine,
    producer: Producer,
    topics: Topics,
    *,
    clock: Clock,
    limit: int = 500,
    flush_timeout_s: float = 30.0,
) -> list[EntitlementSnapshot]:
    """One round (steps in the module docstring); returns the snapshots published."""
    snapshots = codec(EntitlementSnapshot)
    tracker = DeliveryTracker()
    published: list[EntitlementSnapshot] = []
    with engine.begin() as conn:
        now = clock()
        due = store.due_snapshots(conn, now=now, limit=limit)  # Step 1.
        for pending in due:
            version = store.stamp_version(conn, pending.snapshot.customer_id, now=now)  # Step 2.
            store.mark_published(conn, {pending.outbox_id: version}, now=now)
            snapshot = pending.snapshot.model_copy(update={"version": version, "updated_at": now})
            produce(  # Step 3.
                producer,
                topics.name(pending.topic),
                pending.key.encode(),
                snapshots.encode(snapshot),
                tracker,
            )
            published.append(snapshot)
        if due:
            remaining = producer.flush(flush_timeout_s)
            tracker.raise_failures()
            if remaining:
                raise DeliveryError(
                    f"entitlements.snapshots: {remaining} record(s) unacknowledged after {flush_timeout_s} s"
                )
    # Step 4. (the transaction committed on leaving the block)
    return published


def run_relay(
    engine: Engine,
    client_config: dict[str, Any],
    topics: Topics,
    *,
    clock: Clock,
    stop: threading.Event,
    interval_s: float = 0.1,
    on_round: Callable[[list[EntitlementSnapshot]], None] | None = None,
) -> None:
    """Relay until `stop` is set, a round every `interval_s` (at once again while rows are due).
    While Kafka or PostgreSQL is unreachable it logs, waits and retries: the rows stay due."""
    producer = make_producer(client_config)
    try:
        while not stop.is_set():
            try:
                published = relay_once(engine, producer, topics, clock=clock)
            except (DeliveryError, OperationalError) as exc:  # Kafka or PostgreSQL away: rows stay due
                log.warning("snapshot relay: %s; retrying", str(exc).splitlines()[0])
                stop.wait(max(interval_s, 1.0))
                continue
            if on_round is not None:
                on_round(published)
            if not published:
                stop.wait(interval_s)
    finally:
        producer.flush(10)
