"""The metering Faust app: topics, the agent, and the wiring of state, catalog and producer.

- `meter_usage` is the agent over usage.events. Its stream yields one event per fetch: up to
  `batch_size` records of all assigned partitions, `{partition: [records]}` (see transport.py;
  Faust's `take_events` on top of it deadlocked now and then). It queues them; `process_batches`
  takes everything queued (adaptive batching, up to `max_batch` records) as runs in fetch order and
  hands them to `MeteringProcessor.process` in a single worker thread (so the Faust loop keeps
  serving the consumer, timers and rebalances), then commits the consumer-group offsets (step 4 of
  the commit order, commit.py).
- Ownership: `owned` is the set of usage.events partitions this worker may process, kept from the
  rebalance callbacks (emptied of revoked partitions before the group moves on, filled from the
  new assignment), not from `consumer.assignment()`, which still lists revoked partitions until the
  new assignment lands. Records of a partition not owned are dropped; records of an owned partition
  that do not start at its stored position + 1 are dropped and the partition re-sought (the
  position rule in processor.py).
- usage.events is subscribed with `acks=False`: Faust does not track or commit its offsets; the
  agent commits exactly the offsets whose effects are durable.
- The catalog (meters + snapshots) is read by `CatalogView`, outside the group, by every worker.
- State is not in Faust tables: see services/metering/README.md ("Why not Faust tables").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import faust
from confluent_kafka.admin import AdminClient
from faust.types import TP

from metergate.domain.records import EntitlementSnapshot, MeterDefinition
from metergate.errors import ConfigurationError
from metergate.kafka.admin import create_topic
from metergate.kafka.faust_broker import faust_broker_kwargs
from metergate.kafka.producer import make_producer
from metergate_services.metering import faust_adapter, metrics
from metergate_services.metering.catalog_view import CatalogView
from metergate_services.metering.commit import GroupOffsets
from metergate_services.metering.membership import MembershipFile
from metergate_services.metering.processor import MeteringProcessor
from metergate_services.metering.settings import MeteringSettings
from metergate_services.metering.store import StateStore
from metergate_services.metering.transport import PASSTHROUGH, batching_app_class

log = logging.getLogger(__name__)


class StartupTimeline:
    """When each step of the worker's start-up was reached, in seconds from the process start
    (`started`, a `time.monotonic()` reading): exported as `metergate_startup_seconds{step}` and
    logged once (INFO) with the first committed batch. Steps: `imported`, `state_opened`, `joined`
    (partitions assigned), `first_batch` (fetched), `catalog_current` (the catalog, read since
    start-up, waited for before the first batch), `first_commit` (the batch's recovery included);
    and `cpu`, the
    process's CPU seconds at the first commit (the start-up's cost, less noisy than its duration on
    a shared machine)."""

    def __init__(self, started: float | None = None) -> None:
        self.started = time.monotonic() if started is None else started
        self.marks: dict[str, float] = {}
        #: called once, after the first commit is logged
        self.after_first_commit: list[Callable[[], None]] = []

    def mark(self, step: str) -> None:
        if step in self.marks:
            return
        self.marks[step] = round(time.monotonic() - self.started, 3)
        metrics.STARTUP.labels(step).set(self.marks[step])
        if step == "first_commit":
            self.marks["cpu"] = round(time.process_time(), 3)
            metrics.STARTUP.labels("cpu").set(self.marks["cpu"])
            log.info("start-up: %s", ", ".join(f"{name} {at:.2f}s" for name, at in self.marks.items()))
            for then in self.after_first_commit:
                then()


class CatalogGate:
    """The catalog as the processor reads it: the first lookup waits until the catalog has been read
    to its end. The worker starts reading the catalog at start-up and starts Faust and joins (takes
    back) its group meanwhile, instead of after it; the agent waits for it before the first batch
    (and its recovery), and every lookup checks it anyway."""

    def __init__(self, catalog: CatalogView, timeline: StartupTimeline, timeout_s: float = 60.0) -> None:
        self.catalog = catalog
        self.current = False
        self._timeline = timeline
        self._timeout_s = timeout_s

    def wait(self) -> None:
        self.catalog.wait_until_current(timeout_s=self._timeout_s)
        self.current = True
        self._timeline.mark("catalog_current")

    def meter(self, name: str) -> MeterDefinition | None:
        if not self.current:
            self.wait()
        return self.catalog.meter(name)

    def snapshot_at(self, customer_id: str, at_ms: int) -> EntitlementSnapshot | None:
        if not self.current:
            self.wait()
        return self.catalog.snapshot_at(customer_id, at_ms)


@dataclass
class Metering:
    """Everything one worker process runs, so `main.run` (and tests) can start and stop it."""

    settings: MeteringSettings
    app: faust.App
    store: StateStore
    catalog: CatalogView
    processor: MeteringProcessor
    executor: ThreadPoolExecutor
    timeline: StartupTimeline
    membership: MembershipFile
    stats: dict[str, int] = field(default_factory=lambda: {"batches": 0, "consumed": 0})

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.catalog.stop()
        self.processor.producer.flush(10)
        self.store.close()
        self.membership.close()


def ensure_changelog(settings: MeteringSettings, client_config: dict[str, Any]) -> int:
    """Create the state changelog like usage.events (same partition count); check the output topics.
    Returns the partition count the state is built for (the changelog's): a customer is counted on
    `partition_for(customer_id, that count)` (processor.py, "where a customer is counted").

    A usage.events that has gained partitions since the state was built is detected here: records on
    the new partitions (and every record whose customer now hashes elsewhere) are forwarded to the
    partition that holds the customer's state, so totals, dedup and limits stay exact; the counting
    itself stays spread over the original partitions (README: "Changing the partition count").

    cleanup.policy=compact,delete with retention = dedup window + 2 days: no event can change a
    total or a dedup entry older than the window (such events are rejected), so Kafka may drop them.
    """
    topics = settings.kafka.topics
    admin = AdminClient(client_config)
    metadata = admin.list_topics(timeout=30).topics
    if topics.events not in metadata:
        raise ConfigurationError(f"topic {topics.events} does not exist (metergate topics create)")
    partitions = len(metadata[topics.events].partitions)
    if settings.changelog_topic in metadata:
        state_partitions = len(metadata[settings.changelog_topic].partitions)
        if state_partitions != partitions:
            log.warning(
                "%s has %d partitions, metering's state (%s) was built for %d: customers stay counted on "
                "partition_for(customer_id, %d); records elsewhere are forwarded there",
                topics.events,
                partitions,
                settings.changelog_topic,
                state_partitions,
                state_partitions,
            )
        if state_partitions > partitions:
            raise ConfigurationError(
                f"{settings.changelog_topic} has {state_partitions} partitions but {topics.events} only "
                f"{partitions}: this state belongs to another usage.events; use another "
                "METERGATE_METERING_APP_ID or delete the changelog topic and the data dir"
            )
    else:
        state_partitions = partitions
    for name in (topics.limits, topics.duplicates):
        if name not in metadata or len(metadata[name].partitions) < state_partitions:
            raise ConfigurationError(
                f"{name} needs at least as many partitions as metering's state ({state_partitions}): "
                "outputs of input partition p go to partition p, which is how recovery finds what a "
                "crash left sent"
            )
    if settings.changelog_topic not in metadata:
        retention_ms = int((settings.dedup_window.total_seconds() + 2 * 86_400) * 1000)
        create_topic(
            client_config,
            settings.changelog_topic,
            partitions,
            replication=settings.kafka.replication,
            config={"cleanup.policy": "compact,delete", "retention.ms": str(retention_ms)},
        )
    return state_partitions


def create_metering(settings: MeteringSettings, timeline: StartupTimeline | None = None) -> Metering:
    timeline = timeline or StartupTimeline()
    kafka = settings.kafka
    client_config: dict[str, Any] = dict(kafka.client_config())
    topics = kafka.topics
    state_partitions = ensure_changelog(settings, client_config)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = StateStore(settings.data_dir / "rocksdb")
    timeline.mark("state_opened")
    catalog = CatalogView(client_config, topics.meters, topics.snapshots)
    catalog.start()  # read to its end while the worker joins its group: the first lookup waits for it
    gate = CatalogGate(catalog, timeline)
    producer = make_producer(client_config, **{"linger.ms": 2, "compression.type": "none"})
    processor = MeteringProcessor(
        topics=topics,
        changelog_topic=settings.changelog_topic,
        store=store,
        meters=gate.meter,
        snapshots=gate.snapshot_at,
        refresh_catalog=catalog.refresh_if_stale,
        producer=producer,
        client_config=client_config,
        partitions=state_partitions,
        dedup_window_ms=int(settings.dedup_window.total_seconds() * 1000),
        future_skew_ms=int(settings.future_skew.total_seconds() * 1000),
        late_grace_ms=int(settings.late_grace.total_seconds() * 1000),
        recovery_idle_s=settings.recovery_idle_s,
        fault=settings.fault_spec,
    )
    try:
        broker = faust_broker_kwargs(kafka)  # bootstrap + the shared security settings
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    membership = MembershipFile(settings.data_dir / "membership.json")
    app_class = batching_app_class(frozenset({topics.events}), membership)
    app = app_class(
        settings.group_id,
        **broker,
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        web_enabled=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_max_poll_records=settings.batch_size,
        stream_wait_empty=False,
        loghandlers=[],
        TableManager=faust_adapter.TablelessTableManager,
    )
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metering-batch")
    metering = Metering(settings, app, store, catalog, processor, executor, timeline, membership)
    events = app.topic(topics.events, key_serializer=PASSTHROUGH, value_serializer=PASSTHROUGH, acks=False)

    # Adaptive batching: the agent only queues fetches; `process_batches` takes EVERYTHING queued
    # as one batch. When processing keeps up, batches are single fetches (low latency); when it
    # falls behind, batches grow and the fixed cost per batch (two flushes, one RocksDB write, one
    # offset commit) is paid less often, so the worker catches up instead of falling further behind.
    queue: asyncio.Queue[dict[int, list[Any]]] = asyncio.Queue(maxsize=16)
    busy = asyncio.Lock()

    @app.agent(events, name="meter_usage")
    async def meter_usage(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            await queue.put(event.value)

    offsets = GroupOffsets(topics.events)
    #: usage.events partitions this worker may process (see the module docstring)
    owned: set[int] = set()

    def drop_queued(partitions: set[int]) -> None:
        kept = []
        while not queue.empty():
            run = {p: r for p, r in queue.get_nowait().items() if p not in partitions}
            if run:
                kept.append(run)
        for run in kept:
            queue.put_nowait(run)

    @app.task
    async def process_batches() -> None:
        loop = asyncio.get_running_loop()
        while True:
            fetched = [await queue.get()]
            while (
                not queue.empty()
                and sum(len(r) for run in fetched for r in run.values()) < settings.max_batch
            ):
                fetched.append(queue.get_nowait())
            async with busy:
                # runs in fetch order, only of partitions this worker owns now
                runs = [
                    (partition, records)
                    for run in fetched
                    for partition, records in sorted(run.items())
                    if partition in owned and records
                ]
                dropped = sum(len(r) for run in fetched for p, r in run.items() if p not in owned)
                if dropped:
                    log.info("dropped %d fetched records of partitions no longer owned", dropped)
                if not runs:
                    continue
                timeline.mark("first_batch")
                if not gate.current:
                    # before recovery, not during it: both are CPU-bound Python on one GIL
                    await loop.run_in_executor(executor, gate.wait)
                job = loop.run_in_executor(executor, processor.process, runs, sorted(owned))
                try:
                    outcome = await asyncio.shield(job)
                except asyncio.CancelledError:
                    await job  # stopping: let the batch finish its commit order, then stop
                    raise
                metering.stats["batches"] += 1
                metering.stats["consumed"] += outcome.consumed
                if outcome.reseek:
                    # the position rule: never jump over records; read them again from where we stand
                    reseek = {p: o for p, o in outcome.reseek.items() if p in owned}
                    drop_queued(set(reseek))
                    for partition, offset in reseek.items():
                        try:
                            await app.consumer.seek(TP(topics.events, partition), offset)
                        except Exception as exc:  # a rebalance took the partition meanwhile
                            # nothing is lost: the next run that does not start at the position
                            # asks for the seek again, and a new owner starts from the group offset
                            log.warning("partition %d: seek to %d failed (%s)", partition, offset, exc)
                # step 4 of the commit order (commit.py): the group offset follows the durable watermark
                offsets.durable(outcome.committed, owned)
                await offsets.commit(
                    lambda due: faust_adapter.commit_offsets(
                        app.consumer, {TP(topics.events, p): o for p, o in due.items()}
                    ),
                    owned,
                    idle=queue.empty(),
                    now=loop.time(),
                )
                if not offsets.pending:
                    timeline.mark("first_commit")
                for partition, offset in outcome.committed.items():
                    if partition not in owned:
                        continue
                    try:
                        highwater = app.consumer.highwater(TP(topics.events, partition))
                    except AssertionError:  # the consumer no longer has it (a rebalance is under way)
                        continue
                    if highwater is not None:
                        metrics.CONSUMER_LAG.labels(str(partition)).set(max(0, highwater - offset - 1))

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        # Faust awaits this before the group moves on: stop owning the partitions (records fetched
        # for them from now on are dropped), drop their queued records and pending offset commits
        # (a lagging group offset is safe: the next owner skips what the stored watermark covers),
        # and wait for the batch in flight, so two workers never process one partition at once.
        partitions = {tp.partition for tp in revoked if tp.topic == topics.events}
        owned.difference_update(partitions)
        drop_queued(partitions)
        offsets.forget(partitions)
        async with busy:
            processor.revoke(partitions)

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
        partitions = {tp.partition for tp in assigned if tp.topic == topics.events}
        async with busy:
            processor.revoke(owned - partitions)  # should be none (revoked first); never keep stale state
            owned.clear()
            owned.update(partitions)
        if partitions:
            timeline.mark("joined")

    @app.timer(interval=5.0)
    async def flush_state() -> None:
        # start a RocksDB memtable flush (it runs in RocksDB's background threads): the write-ahead
        # log a restart after a SIGKILL replays then holds ~5 s of writes, not everything since the
        # last automatic flush (measured: ~1 s to open the state after a 200k-event backlog)
        store.db.flush(False)

    @app.timer(interval=600.0)
    async def expire_old_state() -> None:
        loop = asyncio.get_running_loop()
        removed = await loop.run_in_executor(
            executor, store.expire, processor.clock_ms(), processor.window_ms + processor.grace_ms
        )
        if removed:
            log.info("expired %d dedup entries and totals older than the dedup window", removed)

    return metering
