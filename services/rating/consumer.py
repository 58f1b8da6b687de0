"""The rating consumer: usage.aggregates -> line items, credit ledger, outboxes; offsets in PostgreSQL.

A thin shell: it decodes, asks the pure core (`metergate.domain.rating`) what changes, and writes
that with `metergate.db.rating_store`, one transaction per poll batch. The Kafka group only spreads
partitions over workers; Kafka offsets are never committed. The authoritative position of every
partition is the `consumer_offsets` row written in the same transaction as the rows it produced;
on assignment (start, rebalance) the consumer seeks to it.

Between batches the consumer holding partition 0 also bills the base-fee and add-on fee lines of
every subscription, with or without usage, from the snapshots (`_bill_fees`, commit order in
`_write_fees`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from sqlalchemy import Connection, Engine, RootTransaction, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from metergate.db import credit_store, rating_store
from metergate.db.engine import make_engine
from metergate.domain.ledger import BalanceRow, Depletion, balances_to_publish
from metergate.domain.periods import Period
from metergate.domain.rating import (
    AggregateUpdate,
    Line,
    RatingFold,
    RatingInput,
    Rejected,
    check_aggregate,
    dead_letter,
    depletion_event,
    fee_changes,
    fee_periods,
    rate_records,
    record_outcomes,
    terms_version,
)
from metergate.domain.records import CreditBalance, DeadLetter, LimitEvent, now_utc
from metergate.errors import DeliveryError, InvalidInput
from metergate.faults import Fault
from metergate.kafka.producer import DeliveryTracker, make_producer, produce
from metergate.wire.codec import codec
from metergate.wire.fastwire import read_aggregate
from metergate_services.rating import metrics
from metergate_services.rating.collector import GcPolicy
from metergate_services.rating.line_cache import LineCache
from metergate_services.rating.settings import RatingSettings
from metergate_services.rating.snapshots import SnapshotCache

log = logging.getLogger(__name__)
T = TypeVar("T")
#: (customer, period) pairs whose fee lines are written in one transaction
FEE_PAIRS_PER_TRANSACTION = 2000
#: with no subscription anywhere, how often the clock looks at every customer anyway
FEE_IDLE_SCAN = timedelta(minutes=1)

#: Tests only: "STEP@N" makes the process SIGKILL itself the first time it reaches STEP in its Nth
#: batch or later, to prove that a crash between any two steps of the commit order loses and
#: duplicates nothing. Steps: fees_written (fee lines written, before their COMMIT) and
#: fees_committed (after it, before the memo), counted in fee transactions that write something
#: (the first comes before the first batch); then, per batch: locked, folded, dlq_sent, written
#: (all before COMMIT), committed, published (limit events sent, not yet marked published),
#: balance_published (credit balances sent, not yet marked published).
FAULT_ENV = "METERGATE_RATING_FAULT"
FAULT_STEPS = (
    "fees_written",
    "fees_committed",
    "locked",
    "folded",
    "dlq_sent",
    "written",
    "committed",
    "published",
    "balance_published",
)


def is_data_error(exc: BaseException) -> bool:
    """PostgreSQL refused a value (SQLSTATE class 22: a NUL in text, a number out of range, ...):
    the fault of a record, not of the database, so redoing the same batch would fail again."""
    if isinstance(exc, psycopg.errors.DataError):
        return True
    return isinstance(exc, DBAPIError) and isinstance(exc.orig, psycopg.errors.DataError)


def is_transient(exc: BaseException) -> bool:
    """A database failure worth waiting out (server down or restarting, connection lost, deadlock)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


@dataclass
class Batch:
    """One poll batch, decoded, in consumption order."""

    messages: list[Message]
    records: list[tuple[Message, AggregateUpdate]] = field(default_factory=list)
    rejected: list[DeadLetter] = field(default_factory=list)
    next_offsets: dict[int, int] = field(default_factory=dict)  # partition -> offset after the batch
    first_offsets: dict[int, int] = field(default_factory=dict)  # partition -> first offset in the batch
    consumed: int = 0  # records of assigned partitions not committed before (what the batch accounts for)
    tombstones: int = 0
    key_partitions: dict[str, int] = field(default_factory=dict)  # aggregate key -> partition, of records
    customers: set[str] = field(default_factory=set)  # of records
    #: the snapshot cache's generation when every customer of the batch was found in it (None: not
    #: looked yet, or someone was missing): the look is not repeated while the cache is unchanged
    known_at: int | None = None

    @property
    def partitions(self) -> set[int]:
        return set(self.next_offsets)


@dataclass
class Ahead:
    """Batch N+1's customers *without credit*, folded while batch N was being written.

    Their lines depend only on their own keys (owned by this consumer: the offsets fence checks it
    at N+1's step 1) and snapshots, so the fold can start from N's outcome before N's COMMIT. Used
    only if N committed as it was folded (not redone), N+1 is still the batch it was folded for,
    and none of these customers has credit once N+1's transaction has locked the accounts;
    otherwise dropped, and the batch is folded whole in its transaction as usual.
    """

    batch: Batch
    after: InFlight  # batch N, whose outcome it starts from
    fold: RatingFold
    customers: set[str]
    rejections: list[Rejected]  # what the DLQ must hear of (index in batch.records, message, why)
    stored: set[str]  # line keys known to exist


@dataclass
class InFlight:
    """A batch rated (steps 1-3 done, its transaction open) whose writes and COMMIT run on the writer."""

    batch: Batch
    fold: RatingFold
    conn: Connection
    transaction: RootTransaction
    key_partitions: dict[str, Any]  # aggregate key -> partition
    lines: rating_store.StagedLines  # the changed lines, formatted for COPY
    dead_letters: list[DeadLetter]
    snapshot_rejects: list[DeadLetter]  # taken from the snapshot cache's rejects: given back on failure
    started: float
    future: Future[float] | None = None  # -> perf_counter() at COMMIT


class RatingConsumer:
    def __init__(
        self,
        settings: RatingSettings,
        engine: Engine | None = None,
        gc_policy: GcPolicy | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        #: decides which billing period is current (fee lines); tests inject one
        self.clock = clock or settings.clock()
        self.gc_policy = gc_policy  # the process's garbage-collection policy (main.run() installs one)
        client = settings.kafka.client_config()
        self.topics = settings.kafka.topics
        self.topic = self.topics.aggregates
        self.group = settings.group_id
        self.engine = engine or make_engine(
            settings.database.sqlalchemy_url(), settings.database.schema_name, pool_size=2, max_overflow=2
        )
        self._own_engine = engine is None
        rating_store.install(self.engine)  # the staging table its line writes copy into
        self.consumer = Consumer(
            {
                **client,
                "group.id": self.group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                "session.timeout.ms": settings.session_timeout_ms,
                "heartbeat.interval.ms": max(settings.session_timeout_ms // 6, 500),
                "fetch.min.bytes": 1,
                "queued.max.messages.kbytes": 65536,
            }
        )
        self.producer = make_producer(client)
        #: runs steps 4-5 (writes, COMMIT) of one batch while this thread decodes the next; one at a time
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rating-writer")
        self._inflight: InFlight | None = None
        #: set when a batch in flight was lost in a rebalance: what was read since must be read again
        self._restart_consumption = False
        #: customers seen with a credit account, and all customers whose account this process
        #: looked for (hints for folding ahead: the batch's transaction checks under lock)
        self._credit_customers: set[str] = set()
        self._credit_checked: set[str] = set()
        self._last_committed: InFlight | None = None
        self.tracker = DeliveryTracker()
        self.snapshots = SnapshotCache(client, self.topics.snapshots, on_reject=self._reject_snapshot)
        #: partition -> next offset as stored in PostgreSQL (None: no row yet); only assigned partitions
        self.expected: dict[int, int | None] = {}
        self._stop = threading.Event()
        self._dead_letters = codec(DeadLetter)
        self._limits = codec(LimitEvent)
        self._outbox_pending = True  # publish leftovers of an earlier run first
        #: limit_outbox ids produced whose delivery report has not come (never produced again meanwhile)
        self._limits_in_flight: set[str] = set()
        #: limit_outbox ids delivered, not yet marked published
        self._limits_delivered: set[str] = set()
        self._balances = codec(CreditBalance)
        #: balance_outbox rows (customer, ledger position) produced, delivery report outstanding
        self._balances_in_flight: set[tuple[str, int]] = set()
        #: balance_outbox rows delivered, not yet marked published
        self._balances_delivered: set[tuple[str, int]] = set()
        self._next_outbox = 0.0
        #: the publisher transaction holding the claimed outbox rows while some are in flight
        self._publisher: tuple[Connection, RootTransaction] | None = None
        self._snapshot_rejects: list[DeadLetter] = []
        self._next_expiry = 0.0
        self._next_lag = 0.0
        self.line_cache = LineCache(settings.line_cache_keys)
        #: fee lines: (customer, period start) -> terms version committed by this process (a memo)
        self._fees_done: dict[tuple[str, datetime], int] = {}
        #: customers whose fees are to be (re)computed: their snapshots changed, or a write failed
        self._fees_dirty: set[str] = set()
        #: when the clock next needs every customer's current period looked at (a period ends)
        self._fees_scan_at: datetime | None = None
        self._fee_writes = 0  # fee transactions that wrote lines (fault injection counts them)
        self._batches = 0
        self._fault_at = Fault.from_env(FAULT_ENV, FAULT_STEPS)
        self.database_failures = 0  # PostgreSQL errors waited out by this process
        self.committed_updates = 0  # newer versions rated and committed by this process
        self.committed_records = 0  # records consumed and committed (stale and rejected included)
        #: the accounting invariant of this process (see metrics.RECORDS): consumed = the sum of the rest
        self.accounting: dict[str, int] = dict.fromkeys(("consumed", *metrics.OUTCOMES), 0)
        #: seconds spent per step of a batch (decode, load, fold, dlq, write, commit), for benchmarks
        self.timings: defaultdict[str, float] = defaultdict(float)
        self.first_batch_at: float | None = None  # perf_counter() when the first batch arrived
        self.last_commit_at: float | None = None
        #: CPU seconds (this thread; the whole process) at the first batch and at the last commit
        self.first_batch_cpu: tuple[float, float] | None = None
        self.last_commit_cpu: tuple[float, float] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, until: Callable[[RatingConsumer], bool] | None = None) -> None:
        """Consume until stop() (or `until(self)` is true after a batch); then leave the group cleanly.

        Pipelined, one batch deep: while batch N's writes and COMMIT run on the writer thread
        (PostgreSQL works, this thread would only wait), this thread consumes and decodes batch
        N+1. Batch N+1's transaction starts only after N committed (`_settle`), so the commit order
        of every batch, and what each step replays, are those of `_rate`; if N does not commit,
        N+1 is dropped and consumption restarts at the stored offsets. Step 6 of N (relaying the
        outbox rows it committed) runs once N+1 is on the writer, so its wait for the broker's
        acks overlaps N+1's writes; the publisher transaction locks only committed outbox rows,
        and N+1 only inserts new ones.
        """
        try:
            self.snapshots.catch_up(self.settings.snapshot_idle_s, self.settings.snapshot_timeout_s)
            log.info(
                "rating: %d entitlement snapshots loaded from %s", len(self.snapshots), self.snapshots.topic
            )
            if self.gc_policy is not None:
                self.gc_policy.after_batch()  # the start-up state (snapshots) collected once, then frozen
            self.consumer.subscribe(
                [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
            )
            while not self.stopping:
                messages = self.consumer.consume(
                    self.settings.batch_size, timeout=self.settings.poll_timeout_s
                )
                self.snapshots.poll()
                batch = self._prepare_timed(messages) if messages else None  # while N commits
                ahead = None
                if batch is not None and self._inflight is not None:
                    ahead = self._fold_ahead(batch, self._inflight)  # still while N commits
                if self._inflight is not None and not self._settle():
                    batch = None  # N was not committed: N+1 is read again from the stored offsets
                if self._restart_consumption:
                    self._restart_consumption = False
                    batch = None
                    if not self.stopping:
                        self._reseek()
                if self.gc_policy is not None and messages:
                    self.gc_policy.after_batch()
                self._housekeeping()  # nothing in flight: its locks cannot meet a batch's
                if until is not None and until(self):
                    break
                if batch is not None:
                    self._start(batch, ahead)
                if self._outbox_pending:  # step 6 of what committed, while the writer writes the next batch
                    mark = time.perf_counter()
                    self._publish_outbox()
                    self._tick("publish outbox", mark)
        finally:
            try:
                if self._inflight is not None:
                    self._settle()
                if self._outbox_pending:
                    self._publish_outbox()
            finally:
                self.close()

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        try:
            self.consumer.close()  # leave the group now: partitions move without waiting for a timeout
        except RuntimeError:
            pass
        self.producer.flush(self.settings.flush_timeout_s)
        try:
            if self._publisher is not None:
                self._mark_published()  # delivered while closing: not re-published at the next start
        except (OperationalError, InterfaceError) as exc:
            log.warning("rating: delivered outbox records left unmarked (%s)", _first_line(exc))
        finally:
            self._drop_publisher()
        self.snapshots.close()
        if self.gc_policy is not None:
            self.gc_policy.close()
        if self._own_engine:
            self.engine.dispose()

    # -- assignment: seek to the offsets stored in PostgreSQL ----------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]

        def read(conn: Any) -> dict[int, int]:
            return rating_store.stored_offsets(conn, self.group, self.topic, numbers)

        stored = self._with_database(read, what="reading stored offsets")
        if stored is None:  # stopping while the database is down
            return
        for tp in partitions:
            offset = stored.get(tp.partition)
            tp.offset = OFFSET_BEGINNING if offset is None else offset
            self.expected[tp.partition] = offset
        if 0 in numbers:  # this consumer bills fee lines now (`_bill_fees`): every customer's
            self._fees_dirty |= set(self.snapshots.terms.newest_by_customer)
            self._fees_scan_at = None
        consumer.assign(partitions)
        log.info(
            "rating: assigned %s", {tp.partition: stored.get(tp.partition, "beginning") for tp in partitions}
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Nothing to commit here: every batch commits its offsets with its rows. A batch in flight
        # finishes first (committed: its state is recorded, then dropped with the partitions; not
        # committed: whatever this consumer read since is read again from the stored offsets).
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            try:
                self._committed(inflight, self._wait(inflight))
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("rating: the batch in flight failed during a rebalance (%s)", _first_line(exc))
                self._snapshot_rejects[:0] = inflight.snapshot_rejects
                self._restart_consumption = True
        self.line_cache.drop_partitions([tp.partition for tp in partitions])
        for tp in partitions:
            self.expected.pop(tp.partition, None)
            try:
                metrics.LAG.remove(str(tp.partition))
            except KeyError:
                pass
        log.info("rating: revoked %s", [tp.partition for tp in partitions])

    def _reseek(self) -> None:
        """Seek every assigned partition back to its stored offset (after a fencing conflict)."""
        partitions = sorted(self.expected)
        stored = self._with_database(
            lambda conn: rating_store.stored_offsets(conn, self.group, self.topic, partitions),
            what="re-reading offsets",
        )
        if stored is None:
            return
        for partition in partitions:
            offset = stored.get(partition)
            self.expected[partition] = offset
            self.consumer.seek(
                TopicPartition(self.topic, partition, OFFSET_BEGINNING if offset is None else offset)
            )

    # -- one batch ------------------------------------------------------------------------------

    def _prepare(self, messages: list[Message]) -> Batch:
        batch = Batch(messages)
        expected, next_offsets, first_offsets = self.expected, batch.next_offsets, batch.first_offsets
        records, key_partitions, customers = batch.records, batch.key_partitions, batch.customers
        consumed = 0
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("rating: consumer error: %s", error)
                continue
            partition, offset = message.partition(), message.offset()
            if partition is None or offset is None or partition not in expected:
                continue  # revoked while the batch was in flight
            stored = expected[partition]
            if stored is not None and offset < stored:
                continue  # already committed (a redelivery after pause/resume)
            if partition not in next_offsets:
                first_offsets[partition] = offset
            next_offsets[partition] = offset + 1
            consumed += 1
            value = message.value()
            if value is None:
                batch.tombstones += 1
                continue  # a tombstone of the compacted topic: nothing to rate
            try:
                aggregate = read_aggregate(value)
                check_aggregate(aggregate)  # ids, value range: what PostgreSQL could not store
            except InvalidInput as exc:
                batch.rejected.append(self._dead_letter(message, exc))
                continue
            records.append((message, aggregate))
            key_partitions[aggregate.key] = partition
            customers.add(aggregate.customer_id)
        batch.consumed = consumed
        return batch

    def _prepare_timed(self, messages: list[Message]) -> Batch:
        started = time.perf_counter()
        if self.first_batch_at is None:
            self.first_batch_at = started
            self.first_batch_cpu = (time.thread_time(), time.process_time())
        batch = self._prepare(messages)
        self.timings["decode"] += time.perf_counter() - started
        return batch

    def _current(self, batch: Batch) -> Batch:
        """`batch` as `_prepare` would make it now (prepared while the previous batch was in flight:
        a partition revoked or a redelivered offset since then means reading it again)."""
        for partition, first in batch.first_offsets.items():
            if partition not in self.expected:
                return self._prepare(batch.messages)
            stored = self.expected[partition]
            if stored is not None and first < stored:
                return self._prepare(batch.messages)
        return batch

    def _catch_up_unknown(self, batch: Batch) -> bool:
        """Read new snapshots first when the batch has a customer without one (at most once a second)."""
        generation = self.snapshots.generation
        if batch.known_at == generation:
            return False  # every customer was found, and the cache has not changed since (fold ahead)
        if all(map(self.snapshots.lookup, batch.customers)):  # (a loop in C; a snapshot is true)
            batch.known_at = generation
            return False
        if time.monotonic() - self.snapshots.last_caught_up > 1.0:
            # a customer unknown so far: its snapshot may just have been published
            self.snapshots.catch_up(idle_s=0.2, timeout_s=2.0)
            return True
        return False

    def _start(self, batch: Batch, ahead: Ahead | None = None) -> None:
        """Rate `batch` (steps 1-3, this thread) and hand its writes and COMMIT to the writer."""
        batch = self._current(batch)
        if not batch.next_offsets:
            return
        if self._catch_up_unknown(batch) or (ahead is not None and ahead.batch is not batch):
            ahead = None
        try:
            inflight = self._rate(batch, ahead)
        except rating_store.StaleAssignment as exc:
            log.warning("rating: %s; re-reading stored offsets", exc)
            self.line_cache.clear()
            self._reseek()
            return
        except Exception as exc:
            if is_data_error(exc):
                self._isolate(batch, exc)
                return
            if not is_transient(exc):
                raise
            if not self._redo(batch, exc):
                self._restart_consumption = True  # not committed: read again from the stored offsets
            return
        inflight.future = self._writer.submit(self._write, inflight)
        self._inflight = inflight

    def _fold_ahead(self, batch: Batch, inflight: InFlight) -> Ahead | None:
        """Fold `batch`'s customers without credit, starting from what `inflight` (batch N) will
        have committed; CPU work (and a read of lines not in memory) while N's writes run."""
        after = {**self.expected, **inflight.batch.next_offsets}
        for partition, first in batch.first_offsets.items():
            next_offset = after.get(partition)
            if partition not in self.expected or (next_offset is not None and first < next_offset):
                return None  # `_current` would read the batch again: no use folding this one
        self._catch_up_unknown(batch)
        mark = time.perf_counter()
        conn: Connection | None = None
        try:
            unchecked = batch.customers - self._credit_checked
            if unchecked:  # customers new to this process: which have a credit account (a hint)
                conn = self.engine.connect()
                self._note_credit(unchecked, rating_store.credit_customers(conn, unchecked))
            credit = self._credit_customers
            if credit.isdisjoint(batch.customers):  # the common case: nobody in the batch has credit
                ahead = [
                    ((index, message), aggregate) for index, (message, aggregate) in enumerate(batch.records)
                ]
                keys: Collection[str] = batch.key_partitions.keys()
                customers = set(batch.customers)
            else:
                ahead = [
                    ((index, message), aggregate)
                    for index, (message, aggregate) in enumerate(batch.records)
                    if aggregate.customer_id not in credit
                ]
                keys = {aggregate.key for _, aggregate in ahead}
                customers = batch.customers - credit
            if not ahead:
                return None
            written, written_credits = inflight.fold.lines, inflight.fold.credits
            lines: dict[str, dict[str, Line]] = {}
            credits: dict[str, dict[str, Decimal]] = {}
            others = []
            for key in keys:
                key_lines = written.get(key)
                if key_lines is None:
                    others.append(key)
                    continue
                lines[key] = dict(key_lines)  # batch N's outcome (a copy: this fold changes it)
                for line_key in key_lines:
                    if line_key in written_credits:
                        credits[line_key] = dict(written_credits[line_key])
            cached, cached_credits, missing = self.line_cache.take(others)
            lines.update(cached)
            credits.update(cached_credits)
            if missing:  # committed before batch N, and not in memory
                conn = conn or self.engine.connect()
                stored_lines, stored_credits = rating_store.load_lines(conn, missing)
                lines.update(stored_lines)
                credits.update(stored_credits)
        except Exception as exc:  # whatever it is, the fold in the transaction decides
            log.debug("rating: not folding ahead (%s)", _first_line(exc))
            return None
        finally:
            if conn is not None:
                conn.close()
        try:
            stored = set().union(*lines.values())  # line keys known to exist
            mark = self._tick("load ahead", mark)
            fold = RatingFold(lines=lines, wallets={}, credits=credits)
            rejections = self._fold(fold, ahead, with_credit=set())
        except Exception as exc:  # whatever it is, the fold in the transaction decides
            log.debug("rating: not folding ahead (%s)", _first_line(exc))
            return None
        self._tick("fold ahead", mark)
        return Ahead(batch, inflight, fold, customers, rejections, stored)

    def _note_credit(self, checked: Collection[str], with_credit: Collection[str]) -> None:
        """Remember which of `checked` customers have a credit account (`with_credit`)."""
        if len(self._credit_checked) > 1_000_000:
            self._credit_checked.clear()  # hints only: a customer forgotten is looked for again
            self._credit_customers.clear()
        self._credit_checked.update(checked)
        self._credit_customers.update(with_credit)

    def _wait(self, inflight: InFlight) -> float:
        """Block until the writer finished `inflight` (its COMMIT time; raises what the writer raised)."""
        assert inflight.future is not None
        started = time.perf_counter()
        try:
            return inflight.future.result()
        finally:
            self.timings["wait for commit"] += time.perf_counter() - started

    def _settle(self) -> bool:
        """Wait for the batch in flight and record it; False when it was not committed (and not
        redone), so that what was read after it must be read again from the stored offsets."""
        inflight, self._inflight = self._inflight, None
        assert inflight is not None
        try:
            committed_at = self._wait(inflight)
        except Exception as exc:
            if is_data_error(exc):
                self._snapshot_rejects[:0] = inflight.snapshot_rejects
                self._isolate(inflight.batch, exc)
                return True
            if not is_transient(exc):
                raise
            self._snapshot_rejects[:0] = inflight.snapshot_rejects
            if self._redo(inflight.batch, exc):
                return True
            self._restart_consumption = True
            return False
        self._committed(inflight, committed_at)
        return True

    def _redo(self, batch: Batch, failure: Exception) -> bool:
        """After a PostgreSQL failure: pause, wait until it answers, redo `batch` here (not
        pipelined). False when stopping, when its partitions were taken away meanwhile, or when
        another consumer moved its offsets (the batch is not committed then)."""
        delay = self.settings.retry_initial_s
        while True:
            metrics.DB_RETRIES.inc()
            self.database_failures += 1
            log.warning(
                "rating: PostgreSQL failed (%s); pausing consumption and retrying", _first_line(failure)
            )
            if not self._wait_for_database(delay):
                return False  # stopping, or our partitions were taken away meanwhile
            if not batch.partitions <= set(self.expected):
                return False
            delay = min(delay * 2, self.settings.retry_max_s)
            inflight: InFlight | None = None
            try:
                inflight = self._rate(batch)
                committed_at = self._write(inflight)
            except rating_store.StaleAssignment as exc:
                log.warning("rating: %s; re-reading stored offsets", exc)
                self.line_cache.clear()
                return False
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if inflight is not None:  # rated, then the writes failed: its snapshot rejects go back
                    self._snapshot_rejects[:0] = inflight.snapshot_rejects
                failure = exc
                continue
            self._committed(inflight, committed_at)
            return True

    def _isolate(self, batch: Batch, failure: Exception) -> None:
        """PostgreSQL refused `batch` as data (a value it cannot store that the checks at decode
        did not catch): commit it one record at a time, not pipelined; a record refused alone goes
        to the DLQ (`unwritable`, with PostgreSQL's message) and its offset commits with that, so
        one poison record never stops the others being billed, nor causes a crash loop."""
        log.error(
            "rating: PostgreSQL refused a batch of %d record(s) (%s); writing them one at a time",
            len(batch.messages),
            _first_line(failure),
        )
        for message in batch.messages:
            single = self._prepare([message])  # offsets as committed so far: skips what is done
            if not single.next_offsets:
                continue
            try:
                inflight = self._rate(single)
                committed_at = self._write(inflight)
            except Exception as exc:
                if not is_data_error(exc):
                    raise
                refused = InvalidInput(
                    f"PostgreSQL cannot store this record: {_first_line(exc)}", reason="unwritable"
                )
                single.records, single.key_partitions, single.customers = [], {}, set()
                single.rejected.append(self._dead_letter(message, refused))
                inflight = self._rate(single)
                committed_at = self._write(inflight)
            self._committed(inflight, committed_at)

    def _rate(self, batch: Batch, ahead: Ahead | None = None) -> InFlight:
        """Steps 1-3 of committing `batch`, in this thread; `_write` does 4-5. The commit order, and
        what a failure at each step replays:

        1. lock this batch's `consumer_offsets` rows and check they hold what this consumer
           expects (else another consumer moved them: roll back, seek to the stored offsets);
        2. read the stored lines of the batch's aggregate keys and lock the customers' credit
           accounts; fold every record in offset order (pure);
        3. send this batch's DLQ records and wait for the broker's acks (failure: roll back;
           the whole batch is redone, so a DLQ record may be sent twice: DLQ consumers
           deduplicate by `source` position);
        4. write line items, ledger entries (+ grants' running figures, + the customers' balances
           into `balance_outbox`), depletion counters and their LimitEvents into `limit_outbox`,
           refreshed `invoice_sync` rows, and the offsets after the batch, all in this one
           transaction;
        5. COMMIT. A crash before it leaves nothing: the restart seeks to the stored offsets and
           redoes the batch, and idempotency keys + version guards make the redo exact;
        6. after COMMIT, publish `limit_outbox` rows to usage.limits and mark them published (a
           crash in between re-publishes them at start: the same limit_event_id, so consumers
           deduplicate; the depletion itself is recorded exactly once, in step 4). Each row is
           produced once and stays in flight until its delivery report, however long the broker
           stalls: never re-produced because a flush timed out (`_publish_outbox`). The balance
           outbox rows step 4 wrote (with the ledger entries) are relayed here too: each
           customer's newest balance, never an older one after a newer one.

        A batch PostgreSQL refuses as data (SQLSTATE class 22) is redone one record at a time,
        the refused record going to the DLQ as `unwritable` (`_isolate`); the rule that no record
        is skipped holds: each offset commits with its rows or its DLQ record.

        Steps 4-5 run on the writer thread; the next batch's step 1 waits for its COMMIT. The
        records of customers without credit may have been folded ahead (`Ahead`): step 2 then
        folds the others and joins the two (per customer, folding apart changes nothing).
        """
        expected = {partition: self.expected[partition] for partition in sorted(batch.partitions)}
        self._batches += 1
        started = mark = time.perf_counter()
        conn = self.engine.connect()
        try:
            transaction = conn.begin()
            rating_store.lock_offsets(conn, self.group, self.topic, expected)  # 1
            self._fault("locked")
            wallets = rating_store.load_credit(conn, batch.customers)  # 2
            with_credit = {customer for customer, _ in wallets}
            self._note_credit(batch.customers, with_credit)
            if ahead is not None and (
                ahead.after is not self._last_committed or ahead.customers & with_credit
            ):
                ahead = None  # batch N was redone, or a customer folded ahead has credit now
            folded = ahead.customers if ahead is not None else set()
            here = [
                ((index, message), aggregate)
                for index, (message, aggregate) in enumerate(batch.records)
                if aggregate.customer_id not in folded
            ]
            lines, credits, missing = self.line_cache.take({aggregate.key for _, aggregate in here})
            if missing:
                stored_lines, stored_credits = rating_store.load_lines(conn, missing)
                lines.update(stored_lines)
                credits.update(stored_credits)
            stored = set().union(*lines.values())  # line keys known to exist
            mark = self._tick("load", mark)
            fold = RatingFold(lines=lines, wallets=wallets, credits=credits)
            rejections = self._fold(fold, here, with_credit=with_credit)
            if ahead is not None:
                fold.absorb(ahead.fold)
                rejections += ahead.rejections
                stored |= ahead.stored
            rejections.sort(key=lambda item: item.position)  # offset order, as one fold would have found them
            dead_letters = [*batch.rejected, *(self._dead_letter(r.source, r.rejection) for r in rejections)]
            snapshot_rejects, self._snapshot_rejects = self._snapshot_rejects, []
            dead_letters.extend(snapshot_rejects)
            mark = self._tick("fold", mark)
            self._fault("folded")
            try:
                self._send_dead_letters(dead_letters)  # 3
            except BaseException:
                self._snapshot_rejects[:0] = snapshot_rejects
                raise
            self._fault("dlq_sent")
            mark = self._tick("dlq", mark)
            staged = rating_store.stage_lines(conn, list(fold.changed.values()), fold.credits, stored)
            self._tick("stage lines", mark)
        except BaseException:
            conn.close()  # rolls back
            raise
        return InFlight(
            batch,
            fold,
            conn,
            transaction,
            batch.key_partitions,
            staged,
            dead_letters,
            snapshot_rejects,
            started,
        )

    def _write(self, inflight: InFlight) -> float:
        """Steps 4-5 of `_rate`'s commit order (on the writer thread); returns perf_counter() at COMMIT."""
        conn, fold, batch = inflight.conn, inflight.fold, inflight.batch
        mark = time.perf_counter()
        try:
            rating_store.write_lines(conn, inflight.lines)  # 4
            mark = self._tick("write lines", mark)
            rating_store.write_entries(conn, fold.entries)
            depletions = [self._depletion_event(d, a, line) for d, a, line in fold.depletions]
            rating_store.write_depletions(conn, depletions)
            mark = self._tick("write ledger", mark)
            rating_store.refresh_invoices(conn, fold.invoices)
            mark = self._tick("write invoices", mark)
            rating_store.save_offsets(conn, self.group, self.topic, batch.next_offsets)
            mark = self._tick("write offsets", mark)
            self._fault("written")
            inflight.transaction.commit()  # 5
        finally:
            conn.close()  # rolls back unless committed
        committed_at = self._tick("commit", mark)
        self._fault("committed")
        return committed_at

    def _committed(self, inflight: InFlight, committed_at: float) -> None:
        """Record a committed batch in this process's state (this thread), then step 6."""
        fold, batch = inflight.fold, inflight.batch
        self._last_committed = inflight
        self.line_cache.store(inflight.key_partitions, fold.lines, fold.credits)
        self.expected.update(batch.next_offsets)
        for letter in inflight.dead_letters:
            metrics.REJECTED.labels(letter.reason).inc()
        metrics.UPDATES.inc(fold.updates)
        metrics.STALE.inc(fold.stale)
        self._account(batch, fold)
        metrics.LINE_ITEMS.inc(len(fold.changed))
        for entry_type, count in Counter(entry.entry_type for entry in fold.entries).items():
            metrics.LEDGER_WRITES.labels(entry_type.value).inc(count)  # one labels() per type: ~2 us each
        metrics.BATCH_SECONDS.observe(committed_at - inflight.started)
        self.committed_updates += fold.updates
        self.committed_records += len(batch.messages)
        self.last_commit_at = committed_at
        self.last_commit_cpu = (time.thread_time(), time.process_time())
        if fold.depletions or fold.entries:  # a limit event, or a balance: step 6 follows in run()
            self._outbox_pending = True

    def _account(self, batch: Batch, fold: RatingFold) -> None:
        """Count a committed batch's records by outcome (`metrics.RECORDS`); a sum that does not
        add up is a bug of ours: stop loudly rather than bill from a miscount."""
        counted = record_outcomes(fold, rejected_at_decode=len(batch.rejected), tombstones=batch.tombstones)
        outcomes = counted.as_dict()
        if not counted.accounts_for(batch.consumed):
            raise rating_store.IntegrityFault(
                f"accounting: {batch.consumed} record(s) consumed but {outcomes} accounted for"
            )
        metrics.CONSUMED.inc(batch.consumed)
        self.accounting["consumed"] += batch.consumed
        for outcome, count in outcomes.items():
            metrics.RECORDS.labels(outcome).inc(count)
            self.accounting[outcome] += count

    def _fault(self, step: str) -> None:
        self._fault_at.at(step, self._batches)

    def _tick(self, step: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[step] += now - since
        return now

    def _depletion_event(
        self, depletion: Depletion, aggregate: RatingInput, line: Line
    ) -> tuple[Any, str, bytes]:
        event = depletion_event(depletion, aggregate, line)
        return depletion, event.limit_event_id, self._limits.encode(event)

    # -- side outputs ---------------------------------------------------------------------------

    def _fold(
        self, fold: RatingFold, records: list[tuple[tuple[int, Message], Any]], *, with_credit: set[str]
    ) -> list[Rejected]:
        """Fold each ((index, message), aggregate) in order (`rate_records`: newest per key, the
        per-record rejection rule); returns what the DLQ must hear of."""
        return rate_records(fold, records, self.snapshots.terms, with_credit)

    def _dead_letter(self, message: Message, exc: InvalidInput) -> DeadLetter:
        return dead_letter(
            exc,
            topic=message.topic() or "",
            partition=message.partition() or 0,
            offset=message.offset() or 0,
            key=message.key(),
            value=message.value(),
            rejected_at=now_utc(),
        )

    def _reject_snapshot(self, message: Message, exc: InvalidInput) -> None:
        self._snapshot_rejects.append(self._dead_letter(message, exc))

    def _send_dead_letters(self, dead_letters: list[DeadLetter]) -> None:
        if not dead_letters:
            return
        for letter in dead_letters:
            produce(
                self.producer,
                self.topics.dlq,
                letter.original_key,
                self._dead_letters.encode(letter),
                self.tracker,
            )
        self._flush()

    def _flush(self) -> None:
        timeout_s = self.settings.flush_timeout_s
        remaining = self.producer.flush(timeout_s)
        if remaining:
            raise DeliveryError(f"{remaining} record(s) still queued for Kafka after {timeout_s} s")
        self.tracker.raise_failures()

    def _limit_delivered(self, event_id: str) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, _message: Message) -> None:
            if error is None:
                self._limits_delivered.add(event_id)
            else:  # librdkafka gave up on it (message.timeout.ms): it may be produced again
                log.warning("rating: limit event %s not delivered (%s); will retry", event_id, error.str())
                self._limits_in_flight.discard(event_id)

        return report

    def _balance_delivered(self, row: tuple[str, int]) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, _message: Message) -> None:
            if error is None:
                self._balances_delivered.add(row)
            else:  # librdkafka gave up on it: the customer's newest balance is sent at the next round
                log.warning("rating: credit balance %s@%d not delivered (%s); will retry", *row, error.str())
                self._balances_in_flight.discard(row)

        return report

    def _produce(self, topic: str, key: str, value: bytes, report: Callable[..., None]) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key.encode(), on_delivery=report)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _publish_outbox(self) -> None:
        """Relay the outboxes (step 6 of the commit order): `limit_outbox` rows exactly once each,
        and each customer's newest `balance_outbox` row (rule 9 of `metergate.domain.ledger`).

        The rows are claimed in one publisher transaction (`FOR UPDATE SKIP LOCKED`: another
        consumer publishing at the same time takes other rows), held while any of them is in
        flight. A row is produced once and then left to the idempotent producer, whose own retries
        never duplicate it: while its delivery report is outstanding (a stalled broker: however
        long it takes) it is *in flight* and never produced again; delivered, it is marked
        published; only a definitive delivery failure lets it be produced anew. (Before: a 30 s
        flush gave up while the first copy was still queued, and the retry sent a second one.) A
        crash after delivery, before the mark commits, re-publishes it at start: the same
        limit_event_id, so consumers deduplicate; the same balance and ledger position, which
        readers keep once.

        Balances: of the rows held for a customer only the newest is sent, and not while another
        relay holds an older one (it might land after); held rows a newer one supersedes are
        deleted unsent. At most one balance per customer is in flight: balances recorded while
        the broker is slow collapse into the newest, sent once the previous one is acknowledged.
        Balance rows come from rating's own batches, from expiry and from `metergate credits
        grant|expire` (any process writing ledger entries): the relay looks for them after every
        batch that wrote entries and every `OUTBOX_INTERVAL_S`.
        """
        try:
            if self._publisher is None:
                conn = self.engine.connect()
                self._publisher = (conn, conn.begin())
            conn, _ = self._publisher
            for event_id, customer_id, payload in rating_store.claim_unpublished_limits(conn):
                if event_id in self._limits_in_flight:
                    continue
                self._limits_in_flight.add(event_id)
                self._produce(self.topics.limits, customer_id, payload, self._limit_delivered(event_id))
            self._relay_balances(conn)
            if self._limits_in_flight or self._balances_in_flight:
                self.producer.flush(self.settings.flush_timeout_s)  # what is still queued stays in flight
            self._mark_published()
        except (OperationalError, InterfaceError) as exc:
            self._drop_publisher()
            log.warning("rating: outbox not published yet (%s); will retry", _first_line(exc))

    def _relay_balances(self, conn: Connection) -> None:
        """Claim unpublished balances and produce what rule 9 lets this relay send now."""
        claimed = rating_store.claim_unpublished_balances(conn)
        if not claimed:
            return
        sent = self._balances_in_flight | self._balances_delivered
        held = {(b.customer_id, b.ledger_position): b for b in claimed}
        known = [
            BalanceRow(
                r.customer_id, r.ledger_position, r.published or (r.customer_id, r.ledger_position) in sent
            )
            for r in rating_store.recorded_balances(conn, {b.customer_id for b in claimed})
        ]
        waiting = {customer for customer, _ in self._balances_in_flight - self._balances_delivered}
        relay = balances_to_publish((row for row in held if row not in sent), known, waiting)
        rating_store.drop_balances(conn, relay.superseded)
        for row in relay.send:
            balance = held[row]
            record = CreditBalance(
                customer_id=balance.customer_id,
                currency=balance.currency,
                balance=balance.balance,
                ledger_position=balance.ledger_position,
                as_of=balance.as_of,
            )
            self._balances_in_flight.add(row)
            self._produce(
                self.topics.balances,
                balance.customer_id,
                self._balances.encode(record),
                self._balance_delivered(row),
            )

    def _mark_published(self) -> None:
        """Step 6's second half: mark the delivered outbox rows published; COMMIT the publisher
        transaction once none is in flight any more."""
        if self._publisher is None:
            return
        conn, transaction = self._publisher
        delivered = sorted(self._limits_delivered)
        balances = sorted(self._balances_delivered)
        if delivered:
            self._fault("published")
            rating_store.mark_published(conn, delivered)
        if balances:
            self._fault("balance_published")
            rating_store.mark_balances_published(conn, balances)
        waiting = len(self._limits_in_flight - self._limits_delivered)
        waiting += len(self._balances_in_flight - self._balances_delivered)
        if not waiting:
            transaction.commit()
            self._drop_publisher()
            self._limits_in_flight.difference_update(delivered)
            self._limits_delivered.difference_update(delivered)
            self._balances_in_flight.difference_update(balances)
            self._balances_delivered.difference_update(balances)
            metrics.LIMITS_PUBLISHED.inc(len(delivered))
            metrics.BALANCES_PUBLISHED.inc(len(balances))
            self._outbox_pending = False
        else:
            self._outbox_pending = True
            log.info("rating: %d outbox record(s) awaiting the broker's ack", waiting)

    def _drop_publisher(self) -> None:
        if self._publisher is not None:
            conn, _ = self._publisher
            self._publisher = None
            conn.close()  # rolls back unless committed: the rows are claimable again

    # -- periodic work ---------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        self._bill_fees()
        now = time.monotonic()
        if now >= self._next_outbox:  # what other processes recorded (and leftovers of a crash)
            self._next_outbox = now + self.settings.outbox_interval_s
            self._publish_outbox()
        interval = self.settings.expiry_interval_s
        if interval and now >= self._next_expiry:
            self._next_expiry = now + interval
            try:
                with self.engine.begin() as conn:
                    entries = credit_store.expire_due(conn, datetime.now(UTC))
                for entry in entries:
                    metrics.LEDGER_WRITES.labels(entry.entry_type.value).inc()
                self._outbox_pending = self._outbox_pending or bool(entries)  # the customers' new balances
            except (OperationalError, InterfaceError) as exc:
                log.warning("rating: credit expiry skipped (%s)", _first_line(exc))
        interval = self.settings.lag_interval_s
        if interval and now >= self._next_lag:
            self._next_lag = now + interval
            self._measure_lag()

    # -- fee lines: base fees and add-on fees of every subscription, with or without usage ----------

    def _bill_fees(self) -> None:
        """Bill the fee lines of the periods that call for it (`metergate.domain.rating.fee_periods`):

        - when a period starts (by `self.clock`): every customer's current period, looked at
          again each time the earliest current period ends;
        - whenever a customer's snapshots change (and, at start-up or on gaining partition 0,
          for every customer): its current period and the periods before it its dated snapshots
          touch, at most `fee_lookback_periods` back.

        One consumer of the group does it: the one holding partition 0 of usage.aggregates (a
        rebalance may let two do it for a moment: fee lines only move to a higher terms version,
        and both compute the same lines from the same snapshots). Runs between batches (nothing
        in flight), in transactions of its own: `_write_fees`.
        """
        self._fees_dirty |= self.snapshots.take_changed()
        if 0 not in self.expected:
            return
        started = time.perf_counter()
        try:
            self._bill_fees_now()
        finally:
            self.timings["fees"] += time.perf_counter() - started

    def _bill_fees_now(self) -> None:
        now = self.clock()
        terms = self.snapshots.terms
        lookback = self.settings.fee_lookback_periods
        wanted: dict[tuple[str, datetime], Period] = {}
        changed, self._fees_dirty = self._fees_dirty, set()
        scan = self._fees_scan_at is None or now >= self._fees_scan_at  # a current period ended
        customers = changed | set(terms.newest_by_customer) if scan else changed
        scan_at = None if scan else self._fees_scan_at
        for customer in customers:
            snapshots = terms.of(customer)
            version = terms_version(snapshots)
            if customer in changed:
                periods = fee_periods(snapshots, now, lookback)
            else:
                periods = fee_periods(snapshots, now, 0, clock_only=True)
            for period in periods:
                if self._fees_done.get((customer, period.start)) != version:
                    wanted[(customer, period.start)] = period
            if periods:  # the last is the current one
                scan_at = periods[-1].end if scan_at is None else min(scan_at, periods[-1].end)
        self._fees_scan_at = scan_at or now + FEE_IDLE_SCAN
        if not wanted:
            return
        pairs = sorted(wanted.items())
        for start in range(0, len(pairs), FEE_PAIRS_PER_TRANSACTION):
            chunk = pairs[start : start + FEE_PAIRS_PER_TRANSACTION]
            try:
                self._write_fees(dict(chunk))
            except (OperationalError, InterfaceError) as exc:
                log.warning("rating: fee lines not written yet (%s); will retry", _first_line(exc))
                self._fees_dirty |= {customer for (customer, _), _ in pairs[start:]}
                return

    def _write_fees(self, pairs: dict[tuple[str, datetime], Period]) -> None:
        """Write the fee lines of (customer, period start) pairs. The commit order, and what a
        failure at each step does:

        1. read the fee lines stored for the pairs (`rating_store.load_fee_lines`);
        2. compute what changes from the snapshots held (pure: `fee_changes`: lines missing or
           different, lines no longer wanted superseded at 0, each at the customer's terms version);
        3. write them with the usage lines' guarded upsert (a fee line only ever moves to a higher
           `snapshot_version`), and refresh the pairs' `invoice_sync` rows, in this transaction;
        4. COMMIT;
        5. remember the pairs as billed at their terms version (a memo of this process).

        A failure or crash before 4 writes nothing: a failure leaves the customers to bill at the
        next round; a restart reads the whole snapshot topic again and looks at every customer's
        periods. After 4 and before 5: the next look finds the stored lines equal to the wanted
        ones and writes nothing. No offset is stored: the input is the snapshot topic, read
        whole at every start, and what is stored is the only state compared with.
        """
        terms = self.snapshots.terms
        with self.engine.begin() as conn:
            stored = rating_store.load_fee_lines(conn, list(pairs))  # 1
            changes: list[Line] = []
            versions: dict[tuple[str, datetime], int] = {}
            for (customer, start), period in pairs.items():
                snapshots = terms.of(customer)
                versions[(customer, start)] = terms_version(snapshots)
                changes += fee_changes(customer, period, snapshots, stored[(customer, start)])  # 2
            if changes:
                self._fee_writes += 1
                known = {key for lines in stored.values() for key in lines}
                staged = rating_store.stage_lines(conn, changes, {}, known)
                rating_store.write_lines(conn, staged)  # 3
                rating_store.refresh_invoices(
                    conn, {(line.customer_id, line.period_start) for line in changes}
                )
                self._fault_at.at("fees_written", self._fee_writes)
        # 4: COMMIT (leaving the block)
        if changes:
            self._fault_at.at("fees_committed", self._fee_writes)
        if len(self._fees_done) > 1_000_000:
            self._fees_done.clear()  # a memo only: a miss costs one read and a comparison
        self._fees_done.update(versions)  # 5
        metrics.LINE_ITEMS.inc(len(changes))

    def _measure_lag(self) -> None:
        for partition, offset in list(self.expected.items()):
            try:
                _, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition), timeout=1.0
                )
            except Exception:  # the broker is busy or gone: skip this round
                return
            metrics.LAG.labels(str(partition)).set(max(high - (offset or 0), 0))

    # -- the database being away -------------------------------------------------------------------

    def _wait_for_database(self, delay: float) -> bool:
        """Pause consumption until PostgreSQL answers; False when stopping instead."""
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.pause(assignment)
        try:
            while not self.stopping:
                self._sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)
                self.consumer.poll(0)  # keep the group membership alive (no records: paused)
                try:
                    with self.engine.connect() as conn:
                        conn.execute(text("SELECT 1"))
                    log.info("rating: PostgreSQL is back; resuming")
                    return True
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    metrics.DB_RETRIES.inc()
                    self.database_failures += 1
            return False
        finally:
            assignment = self.consumer.assignment()
            if assignment:
                self.consumer.resume(assignment)

    def _with_database(self, work: Callable[[Any], T], *, what: str) -> T | None:
        delay = self.settings.retry_initial_s
        while True:
            try:
                with self.engine.begin() as conn:
                    return work(conn)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                metrics.DB_RETRIES.inc()
                self.database_failures += 1
                log.warning("rating: PostgreSQL failed while %s (%s); retrying", what, _first_line(exc))
                if self.stopping:
                    return None
                self._sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
