"""`Entitlements`: the entitlement check in-process, for Python services that want no network hop.

    from metergate.entitlements import Entitlements

    entitlements = Entitlements.from_env()          # reads METERGATE_KAFKA_* / METERGATE_ENTITLEMENTS_*
    decision = entitlements.check("acme", "api_calls", requested_units=5)
    if decision.has_access:
        serve()
        entitlements.report([{"event_id": ..., "customer_id": "acme", "meter": "api_calls", ...}])
    entitlements.close()

It follows `entitlements.snapshots`, `usage.aggregates`, `usage.limits` and `credits.balances`
(and metering's verdicts on `usage.duplicates` and `usage.dlq`, which settle pending usage that
will never be counted) from the beginning on a thread of its own (`metergate.kafka.follow.TopicFollower`, no consumer group), keeps the state in
memory (`metergate.entitlements.state`), and answers `check` from it without any I/O. The state is
checkpointed to disk (`metergate.entitlements.checkpoint`) and loaded from there at start, so a
process restarted while the broker is unreachable answers from its checkpoint (`source: cache`).

`report` produces usage to `usage.events` and counts it in the state at once. The order, per
event, and what happens if a step fails:

1. validate (a bad event is `rejected` with its field and reason; nothing is sent);
2. refuse an event_id already reported here (`duplicate`; metering would not count it either);
3. produce to the customer's canonical partition with the idempotent producer: the partition
   metering counts the customer on, `partition_for(customer_id, N)` (murmur2) with N the partition
   count of metering's state changelog (that of usage.events until the changelog exists), so the
   offset in the delivery report is one that an aggregate's version names;
4. on the delivery report, add it to the pending usage with its partition and offset (dropped when
   an aggregate covering that offset arrives, or metering's duplicate receipt or dead letter for
   that partition and offset: `metergate.entitlements.state`);
5. reply `accepted` only after step 4: what is accepted is on Kafka. If the broker does not
   acknowledge within `ingest_timeout_s` the event is `rejected` with reason `not_delivered`; a
   retry with the same event_id is safe (metering counts an event_id once), and should the first
   attempt still be delivered, step 4 counts it then.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from metergate.domain.entitlements import Decision, Source, requested
from metergate.domain.partitioning import partition_for
from metergate.domain.periods import Period, calendar_month, period_for
from metergate.domain.records import (
    CreditBalance,
    DeadLetter,
    DuplicateReceipt,
    EntitlementSnapshot,
    LimitEvent,
    UsageAggregate,
    UsageEvent,
)
from metergate.entitlements import checkpoint
from metergate.entitlements import metrics as m
from metergate.entitlements.metrics import CHECKS
from metergate.entitlements.settings import EntitlementsSettings
from metergate.entitlements.state import EntitlementState, Freshness, PendingUsage, wall
from metergate.errors import InvalidEvent, InvalidInput
from metergate.kafka.follow import TopicFollower
from metergate.kafka.producer import make_producer
from metergate.wire.codec import codec

log = logging.getLogger("metergate.entitlements")

ACCEPTED, DUPLICATE, REJECTED = "accepted", "duplicate", "rejected"
_PARTITIONS_RECHECK_S = 10.0


@dataclass(frozen=True, slots=True)
class Receipt:
    """What became of one reported event."""

    index: int
    event_id: str | None
    status: str  # accepted | duplicate | rejected
    reason: str | None = None
    field: str | None = None
    message: str | None = None
    partition: int | None = None
    offset: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__ if getattr(self, name) is not None}


def canonical_partition(customer_id: str, partitions: int) -> int:
    """The partition of `usage.events` where a customer's usage is counted: the documented
    partitioner (murmur2, `metergate.kafka.partitioner`), the one the metering worker counts by."""
    return partition_for(customer_id, partitions)


class Entitlements:
    def __init__(
        self,
        settings: EntitlementsSettings,
        *,
        client_config: Mapping[str, Any] | None = None,
        start: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._clock = clock  # wall time, POSIX seconds: the moment a check is answered for
        self.topics = settings.kafka.topics
        self._client_config = dict(client_config or settings.kafka.client_config())
        self.state = EntitlementState(fallback=settings.fallback, clock=clock)
        self._cache_as_of: datetime | None = None
        if settings.checkpoint_path is not None:
            self._cache_as_of = checkpoint.load(settings.checkpoint_path, self.state)
            if self._cache_as_of is not None:
                log.info(
                    "entitlements: %d customers loaded from checkpoint %s (as of %s)",
                    len(self.state.snapshots),
                    settings.checkpoint_path,
                    self._cache_as_of.isoformat(),
                )
        self._decoders = {
            self.topics.snapshots: self._apply_snapshot,
            self.topics.aggregates: self._apply_aggregate,
            self.topics.limits: self._apply_limit,
            self.topics.balances: self._apply_balance,
            self.topics.duplicates: self._apply_receipt,
            self.topics.dlq: self._apply_dead_letter,
        }
        self._snapshot_codec = codec(EntitlementSnapshot)
        self._aggregate_codec = codec(UsageAggregate)
        self._limit_codec = codec(LimitEvent)
        self._balance_codec = codec(CreditBalance)
        self._receipt_codec = codec(DuplicateReceipt)
        self._dead_letter_codec = codec(DeadLetter)
        self._event_codec = codec(UsageEvent)
        self.follower = TopicFollower(
            self._client_config,
            list(self._decoders),
            self._on_records,
            name="entitlements",
            # consume() waits out its timeout unless a whole batch arrived: the timeout is how long
            # a record can sit fetched before a check sees it (10 ms: ~100 short wake-ups a second)
            poll_timeout_s=0.01,
        )
        self._producer: Producer | None = None
        self._producer_lock = threading.Lock()
        self._partitions: int | None = None
        self._partitions_final = False  # read from metering's changelog (never changes)
        self._partitions_recheck_at = 0.0
        self._inflight: set[str] = set()
        self._inflight_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._freshness = Freshness(None, True, Source.LIVE, False)
        self._seen_caught_up: bool | None = None
        self._seen_as_of: float | None = None
        self._seen_contact: float | None = None
        self._stale_at = -math.inf
        self._checkpointed = -1
        m.PENDING.set_function(lambda: sum(len(items) for items in self.state.pending.values()))
        if start:
            self.start()

    @classmethod
    def from_env(cls, *, wait: bool = True) -> Entitlements:
        """Settings from the environment; waits up to `catch_up_timeout_s` for the state to catch up."""
        settings = EntitlementsSettings()
        entitlements = cls(settings)
        if (
            wait
            and settings.catch_up_timeout_s > 0
            and not entitlements.wait_caught_up(settings.catch_up_timeout_s)
        ):
            log.warning(
                "entitlements: not caught up after %s s; answering from %s",
                settings.catch_up_timeout_s,
                "the checkpoint" if entitlements._cache_as_of else "what has been read so far",
            )
        return entitlements

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._threads.append(self.follower.start())
        for target, name in ((self._checkpoint_loop, "entitlements-checkpoint"),):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait_caught_up(self, timeout_s: float) -> bool:
        return self.follower.wait_caught_up(timeout_s)

    @property
    def caught_up(self) -> bool:
        return self.follower.caught_up.is_set()

    def close(self) -> None:
        """Stop following, write the checkpoint, flush what is being reported."""
        self._stopping.set()
        self.follower.stop()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(10)
        self._threads = []
        self.write_checkpoint()
        if self._producer is not None:
            self._producer.flush(self.settings.ingest_timeout_s)
            self._producer = None

    def __enter__(self) -> Entitlements:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- checking ----------------------------------------------------------------------------------
    def freshness(self, now_ts: float | None = None) -> Freshness:
        """Where answers come from now. Called by every check, so it compares what it saw last time
        (caught up, the follower's as_of, when it turns stale) and builds a new value only on change."""
        follower = self.follower
        if now_ts is None:
            now_ts = self._clock()
        caught_up = follower.caught_up.is_set()
        contact = follower.last_contact
        as_of = follower.as_of
        if (
            caught_up is self._seen_caught_up
            and as_of is self._seen_as_of
            and contact is self._seen_contact
            and now_ts < self._stale_at
        ):
            return self._freshness
        stale = contact is None or now_ts - contact > self.settings.stale_after_s
        if caught_up:
            fresh = Freshness(wall(as_of), stale, Source.LIVE, True)
        elif self._cache_as_of is not None:
            fresh = Freshness(self._cache_as_of, True, Source.CACHE, True)
        else:
            fresh = Freshness(None, True, Source.LIVE, False)
        self._freshness = fresh
        self._seen_caught_up, self._seen_as_of, self._seen_contact = caught_up, as_of, contact
        # until when this answer holds (no later than the moment the last contact turns stale)
        self._stale_at = math.inf if stale or contact is None else contact + self.settings.stale_after_s
        return fresh

    def check(
        self,
        customer_id: str,
        feature: str,
        requested_units: Decimal | int | str = 1,
        subject_id: str | None = None,
        *,
        now: datetime | None = None,
    ) -> Decision:
        """May `customer_id` use `requested_units` more of `feature` now? Answered from local state.

        `subject_id` (a team or user inside the account) is accepted for the interface's sake:
        snapshots carry limits per customer, so it does not change the decision yet.
        """
        units = requested(requested_units)
        if now is None:
            now_ts = self._clock()
            fresh = self.freshness(now_ts)
        else:  # a moment of the caller's: the period is its; staleness stays the wall clock's
            now_ts = now.timestamp()
            fresh = self.freshness()
        decision = self.state.check_at(customer_id, feature, units, now_ts, fresh)
        CHECKS[decision.reason] += 1
        return decision

    def customer(self, customer_id: str, *, now: datetime | None = None) -> list[Decision] | None:
        moment = now or datetime.fromtimestamp(self._clock(), UTC)
        return self.state.features(customer_id, moment, self.freshness())

    def knows(self, customer_id: str) -> bool:
        return customer_id in self.state.snapshots

    # -- reporting usage ---------------------------------------------------------------------------
    def report(
        self, events: Iterable[UsageEvent | Mapping[str, Any]], timeout_s: float | None = None
    ) -> list[Receipt]:
        """Send usage to `usage.events` and count it at once (see the module docstring for the order)."""
        receipts: list[Receipt | None] = []
        sending: list[tuple[int, UsageEvent]] = []
        batch_ids: set[str] = set()
        # Step 1 and 2: validate, refuse repeats.
        for index, raw in enumerate(events):
            receipts.append(None)
            try:
                event = raw if isinstance(raw, UsageEvent) else UsageEvent.parse(dict(raw))
            except InvalidEvent as exc:
                event_id = raw.get("event_id") if isinstance(raw, Mapping) else None
                receipts[index] = Receipt(
                    index,
                    event_id if isinstance(event_id, str) else None,
                    REJECTED,
                    exc.reason,
                    exc.field,
                    str(exc),
                )
                continue
            with self._inflight_lock:
                repeat = (
                    event.event_id in batch_ids
                    or event.event_id in self._inflight
                    or self.state.was_reported(event.event_id)
                )
                if not repeat:
                    self._inflight.add(event.event_id)
                    batch_ids.add(event.event_id)
            if repeat:
                receipts[index] = Receipt(
                    index, event.event_id, DUPLICATE, "duplicate", "event_id", "event_id already reported"
                )
                continue
            sending.append((index, event))
        if sending:
            self._send(sending, receipts, self.settings.ingest_timeout_s if timeout_s is None else timeout_s)
        done = [r for r in receipts if r is not None]
        for receipt in done:
            m.REPORTED.labels(receipt.status).inc()
        return done

    def _send(
        self, sending: list[tuple[int, UsageEvent]], receipts: list[Receipt | None], timeout_s: float
    ) -> None:
        producer = self._ensure_producer()
        partitions = self._partition_count(producer)
        remaining = len(sending)
        all_done = threading.Event()
        lock = threading.Lock()

        def delivered(index: int, event: UsageEvent) -> Any:
            def callback(error: KafkaError | None, message: Message) -> None:
                nonlocal remaining
                try:
                    if error is None:
                        partition, offset = message.partition(), message.offset()
                        assert partition is not None and offset is not None
                        # Step 4: count it at once
                        self._add_pending(event, partition, offset)
                        receipt = Receipt(index, event.event_id, ACCEPTED, partition=partition, offset=offset)
                    else:
                        receipt = Receipt(
                            index, event.event_id, REJECTED, "delivery_failed", None, error.str()
                        )
                finally:
                    with self._inflight_lock:
                        self._inflight.discard(event.event_id)
                with lock:
                    if receipts[index] is None:
                        receipts[index] = receipt
                    remaining -= 1
                    if remaining == 0:
                        all_done.set()

            return callback

        # Step 3: produce to the canonical partition
        for index, event in sending:
            value = self._event_codec.encode(event)
            key = event.customer_id.encode()
            partition = -1 if partitions is None else canonical_partition(event.customer_id, partitions)
            while True:
                try:
                    producer.produce(
                        self.topics.events,
                        value=value,
                        key=key,
                        on_delivery=delivered(index, event),
                        partition=partition,
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.flush(0)
        deadline = time.monotonic() + timeout_s
        while not all_done.is_set() and time.monotonic() < deadline:
            all_done.wait(0.005)
        # Step 5: only what Kafka acknowledged is accepted
        with lock:
            for index, event in sending:
                if receipts[index] is None:
                    receipts[index] = Receipt(
                        index,
                        event.event_id,
                        REJECTED,
                        "not_delivered",
                        None,
                        f"Kafka did not acknowledge within {timeout_s:g} s; retry with the same event_id (counted once)",
                    )

    def _add_pending(self, event: UsageEvent, partition: int, offset: int) -> None:
        period = self._period_of(event)
        usage = PendingUsage(event.event_id, partition, offset, event.quantity, period.end)
        self.state.add_pending(event.customer_id, event.meter, period, usage)

    def _period_of(self, event: UsageEvent) -> Period:
        snapshot = self.state.snapshots.get(event.customer_id)
        if snapshot is None:
            return calendar_month(event.timestamp)
        return period_for(event.timestamp, snapshot.billing_anchor, snapshot.reset_period)

    def _ensure_producer(self) -> Producer:
        with self._producer_lock:
            if self._producer is None:
                self._producer = make_producer(self._client_config, **{"linger.ms": 0})
                thread = threading.Thread(
                    target=self._poll_producer, name="entitlements-producer", daemon=True
                )
                thread.start()
                self._threads.append(thread)
            return self._producer

    def _poll_producer(self) -> None:
        while not self._stopping.is_set():
            producer = self._producer
            if producer is None:
                return
            producer.poll(0.01)

    def _partition_count(self, producer: Producer) -> int | None:
        """N of `partition_for(customer_id, N)`: the partition count metering counts customers by,
        that of its state changelog (`metering_changelog_topic`; services/metering/app.py). Before
        the changelog exists (metering never ran) it is usage.events' count, which metering will
        create the changelog with; that guess is re-checked every `_PARTITIONS_RECHECK_S`."""
        if self._partitions is not None and (
            self._partitions_final or time.monotonic() < self._partitions_recheck_at
        ):
            return self._partitions
        changelog, events = self.settings.metering_changelog_topic, self.topics.events
        try:
            topics = producer.list_topics(timeout=2).topics
        except KafkaException as exc:
            log.warning("entitlements: partitions of %s unknown (%s)", changelog, exc)
            return self._partitions
        state = topics.get(changelog)
        if state is not None and state.error is None and state.partitions:
            self._partitions, self._partitions_final = len(state.partitions), True
            return self._partitions
        topic = topics.get(events)
        if topic is not None and topic.error is None and topic.partitions:
            if self._partitions is None:
                log.warning(
                    "entitlements: %s does not exist yet (metering has not run): reported usage goes to "
                    "partition_for(customer_id, %d), the partition count of %s, which metering's state "
                    "will be built for",
                    changelog,
                    len(topic.partitions),
                    events,
                )
            self._partitions = len(topic.partitions)
            self._partitions_recheck_at = time.monotonic() + _PARTITIONS_RECHECK_S
        return self._partitions

    # -- following the topics ----------------------------------------------------------------------
    def _on_records(self, messages: list[Message]) -> None:
        for message in messages:
            apply = self._decoders.get(message.topic() or "")
            if apply is None:
                continue
            try:
                apply(message)
            except InvalidInput as exc:  # somebody else's record: count it and go on
                m.SKIPPED.labels(message.topic() or "", exc.reason).inc()
                log.warning(
                    "entitlements: skipped %s[%s]@%s: %s",
                    message.topic(),
                    message.partition(),
                    message.offset(),
                    exc,
                )

    def _apply_snapshot(self, message: Message) -> None:
        value = message.value()
        if value is None:
            key = message.key()
            if key:
                self.state.apply_snapshot(key.decode(), None, None)
            return
        snapshot = self._snapshot_codec.decode(value)
        self.state.apply_snapshot(snapshot.customer_id, snapshot, value)
        m.APPLIED.labels("snapshot").inc()

    def _apply_aggregate(self, message: Message) -> None:
        value = message.value()
        if value is None:
            return
        self.state.apply_aggregate(self._aggregate_codec.decode(value))
        m.APPLIED.labels("aggregate").inc()

    def _apply_limit(self, message: Message) -> None:
        value = message.value()
        if value is None:
            return
        self.state.apply_limit(self._limit_codec.decode(value))
        m.APPLIED.labels("limit").inc()

    def _apply_balance(self, message: Message) -> None:
        value = message.value()
        if value is None:
            return
        self.state.apply_balance(self._balance_codec.decode(value))
        m.APPLIED.labels("balance").inc()

    def _apply_receipt(self, message: Message) -> None:
        """Metering found a record a duplicate: if it was reported here, it leaves the pending usage."""
        value = message.value()
        if value is None:
            return
        position = self._receipt_codec.decode(value).duplicate
        if position.topic == self.topics.events:
            self.state.settle(position.partition, position.offset)
            m.APPLIED.labels("receipt").inc()

    def _apply_dead_letter(self, message: Message) -> None:
        """Metering rejected a record: if it was reported here, it leaves the pending usage."""
        value = message.value()
        if value is None:
            return
        position = self._dead_letter_codec.decode(value).source
        if position.topic == self.topics.events:
            self.state.settle(position.partition, position.offset)
            m.APPLIED.labels("dead_letter").inc()

    # -- checkpoint --------------------------------------------------------------------------------
    def write_checkpoint(self) -> bool:
        path = self.settings.checkpoint_path
        if path is None or self.state.changes == self._checkpointed:
            return False
        if not self.caught_up and self._cache_as_of is None and not self.state.snapshots:
            return False  # nothing worth keeping yet: do not replace a checkpoint with an empty state
        changes = self.state.changes
        fresh = self.freshness()
        checkpoint.write(path, checkpoint.dump(self.state, fresh.as_of))
        self._checkpointed = changes
        m.CHECKPOINTS.inc()
        return True

    def _checkpoint_loop(self) -> None:
        while not self._stopping.wait(self.settings.checkpoint_interval_s):
            try:
                self.write_checkpoint()
                self.state.expire_pending(datetime.fromtimestamp(self._clock(), UTC))
            except OSError as exc:
                log.error("entitlements: checkpoint not written: %s", exc)
