"""A broker that stalls (SIGSTOP) for longer than rating's flush timeout while a credits_depleted
event is being published: the event reaches usage.limits exactly once after SIGCONT (before: the
flush gave up after 30 s while the first copy was still queued, and the retry sent a second)."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path

import pytest

from metergate.db.credit_store import grant_credit
from metergate.db.engine import make_engine
from metergate.domain.ledger import Grant
from metergate.domain.records import LimitKind
from metergate.embedded.broker import EmbeddedBroker
from metergate.kafka.admin import ensure_topics
from metergate.kafka.topics import Topics
from metergate.testing.waiting import wait_until
from metergate_services.rating.consumer import RatingConsumer
from tests.integration.rating_support import (
    PER_UNIT,
    Feed,
    aggregate,
    limit_events,
    metered,
    query,
    settings,
    snapshot,
)

pytestmark = pytest.mark.integration

FLUSH_TIMEOUT_S = 1.0
STALL_S = 4 * FLUSH_TIMEOUT_S  # several flush rounds (each one re-sent the event before the fix)


class StallingConsumer(RatingConsumer):
    """Stops the broker (SIGSTOP) just as it first produces a limit event; SIGCONT later.

    The stop is taken at the produce itself: a check of the outbox before the relay round raced
    the pipelined writer, whose batch (the depletion) could commit between the check and the claim.
    """

    broker_pid: int
    stalled_at: float | None = None
    publish_rounds = 0  # relay rounds that began with the depletion in flight

    def _produce(self, topic: str, key: str, value: bytes, report: Callable[..., None]) -> None:
        if topic == self.topics.limits and self.stalled_at is None:
            os.kill(self.broker_pid, signal.SIGSTOP)
            self.stalled_at = time.monotonic()
            threading.Timer(STALL_S, os.kill, (self.broker_pid, signal.SIGCONT)).start()
        super()._produce(topic, key, value, report)

    def _publish_outbox(self) -> None:
        if self._limits_in_flight:
            self.publish_rounds += 1
        super()._publish_outbox()


@pytest.fixture
def own_broker():
    """A broker of this test alone: it is the one paused."""
    data_dir = Path(tempfile.mkdtemp(prefix="metergate-stall-"))
    broker = EmbeddedBroker(data_dir)
    broker.start()
    try:
        yield broker
    finally:
        if broker.pid is not None:
            try:
                os.kill(broker.pid, signal.SIGCONT)  # never leave it stopped
            except ProcessLookupError:
                pass
        broker.stop()


def test_credits_depleted_is_published_once_across_a_stalled_broker(own_broker, database_url, db_schema):
    kafka_config = {"bootstrap.servers": own_broker.bootstrap}
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    ensure_topics(kafka_config, topics, 2)
    engine = make_engine(database_url, db_schema)
    try:
        with engine.begin() as conn:
            grant_credit(conn, Grant("g1", "nimbus", "USD", D("1.00"), 1, datetime(2026, 1, 1, tzinfo=UTC)))
    finally:
        engine.dispose()
    feed = Feed(kafka_config, topics)
    feed.snapshot(snapshot("nimbus", [metered("api_calls", PER_UNIT)]))
    # 0.002 per call: 400 calls = 0.80 (credit left), 700 = 1.40 (credit runs out: one depletion)
    feed.aggregate(aggregate("nimbus", "api_calls", "400", 1))
    feed.aggregate(aggregate("nimbus", "api_calls", "700", 2))
    feed.flush()

    rating = settings(
        own_broker.bootstrap, topics, database_url, db_schema, flush_timeout_s=FLUSH_TIMEOUT_S, batch_size=1
    )
    consumer = StallingConsumer(rating)
    consumer.broker_pid = own_broker.pid
    worker = threading.Thread(target=consumer.run, name="rating")
    worker.start()
    try:
        published = "SELECT count(*) FROM limit_outbox WHERE published_at IS NOT NULL"
        wait_until(
            lambda: query(database_url, db_schema, published) == [(1,)],
            "the depletion marked published",
            timeout_s=60,
            every_s=0.2,
        )
    finally:
        consumer.stop()
        worker.join(60)
    assert not worker.is_alive()
    assert consumer.stalled_at is not None and consumer.publish_rounds >= 3  # it kept trying meanwhile

    events = limit_events(kafka_config, topics, idle_s=2.0)
    depleted = [e for e in events if e.kind is LimitKind.CREDITS_DEPLETED]
    assert [(e.customer_id, e.limit_event_id) for e in depleted] == [
        ("nimbus", "nimbus|credits|USD|credits_depleted|1")
    ]
    assert query(database_url, db_schema, "SELECT depletions FROM credit_accounts") == [(1,)]
    amounts = query(
        database_url,
        db_schema,
        "SELECT amount, credits_applied FROM line_items WHERE charge = 'usage'",
    )
    assert amounts == [(D("1.40"), D("1.00"))]
    assert consumer.accounting["consumed"] == 2
    assert consumer.accounting["consumed"] == sum(
        consumer.accounting[k] for k in ("accepted", "duplicate", "rejected", "tombstone")
    )
