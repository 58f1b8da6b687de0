"""Helpers of the metering integration tests: a worker subprocess, producing, reading results."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from metergate.cli.catalog import publish_catalog
from metergate.domain.catalog import parse_catalog
from metergate.domain.records import DeadLetter, DuplicateReceipt, LimitEvent, UsageAggregate, UsageEvent
from metergate.embedded.processes import ChildProcess
from metergate.kafka.follow import TopicFollower
from metergate.kafka.partitioner import LIBRDKAFKA_PARTITIONER
from metergate.kafka.topics import Topics
from metergate.testing.topics import read_topic
from metergate.testing.waiting import wait_until
from metergate.wire.codec import codec

ROOT = Path(__file__).resolve().parents[2]


def publish(document: dict[str, Any], kafka_config: Mapping[str, Any], topics: Topics) -> None:
    publish_catalog(parse_catalog(document), dict(kafka_config), prefix=topics.prefix)


@dataclass
class Sent:
    event: UsageEvent | None
    partition: int
    offset: int


class EventProducer:
    """Produces usage records and remembers where each one landed."""

    def __init__(self, kafka_config: Mapping[str, Any], topics: Topics) -> None:
        self.producer = Producer(
            {
                **kafka_config,
                "linger.ms": 5,
                "enable.idempotence": True,
                "partitioner": LIBRDKAFKA_PARTITIONER,
            }
        )
        self.topic = topics.events
        self.sent: list[Sent] = []
        self._codec = codec(UsageEvent)

    def send(self, event: UsageEvent) -> None:
        self.raw(event.customer_id.encode(), self._codec.encode(event), event)

    def raw(self, key: bytes | None, value: bytes | None, event: UsageEvent | None = None) -> None:
        def delivered(err: Any, msg: Any) -> None:
            assert err is None, err
            self.sent.append(Sent(event, msg.partition(), msg.offset()))

        while True:
            try:
                self.producer.produce(self.topic, value, key, on_delivery=delivered)
                return
            except BufferError:
                self.producer.poll(0.05)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0

    def end_offsets(self) -> dict[int, int]:
        ends: dict[int, int] = defaultdict(lambda: -1)
        for sent in self.sent:
            ends[sent.partition] = max(ends[sent.partition], sent.offset)
        return dict(ends)


class Worker:
    """The metering worker as a subprocess (`python -m metergate_services.metering.main`)."""

    def __init__(
        self, kafka_bootstrap: str, topics: Topics, data_dir: Path, metrics_port: int = 0, **settings: Any
    ) -> None:
        self.metrics_port = metrics_port
        self.env = {
            **os.environ,
            "METERGATE_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "METERGATE_KAFKA_TOPIC_PREFIX": topics.prefix,
            "METERGATE_METERING_DATA_DIR": str(data_dir),
            "METERGATE_METERING_RECOVERY_IDLE_S": "0.3",
            "METERGATE_LOG_LEVEL": os.environ.get("METERGATE_TEST_WORKER_LOG_LEVEL", "WARNING"),
            "METERGATE_METRICS_PORT": str(metrics_port),
        }
        self.env.update({f"METERGATE_METERING_{k.upper()}": str(v) for k, v in settings.items()})
        self.log = data_dir.parent / f"{data_dir.name}-worker.log"
        self.child: ChildProcess | None = None
        self.group = f"{topics.prefix}metergate-metering"
        self.changelog = f"{self.group}-state-changelog"

    def consumed(self) -> float:
        """Records this worker process has accounted for (its own metric; 0 before it answers)."""
        return metric(self.metrics_port, "metergate_events_consumed_total")

    def start(self, **settings: Any) -> Worker:
        env = dict(self.env)
        for key in [k for k in env if k.startswith("METERGATE_METERING_CRASH")]:
            del env[key]
        env.update({f"METERGATE_METERING_{k.upper()}": str(v) for k, v in settings.items()})
        self.child = ChildProcess(
            "metering worker",
            [sys.executable, "-m", "metergate_services.metering.main"],
            self.log,
            env=env,
            cwd=ROOT,
        )
        self.child.start()
        return self

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return None if self.child is None else self.child.process

    def wait_exit(self, timeout_s: float = 60) -> int:
        assert self.child is not None
        try:
            return self.child.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.dump_stacks()
            raise AssertionError(f"worker still running after {timeout_s}s:\n{self.tail()}") from None

    def dump_stacks(self) -> None:
        """Ask a stuck worker for every thread's stack (faulthandler on SIGUSR1) into its log."""
        if self.child is not None and self.child.running():
            before = self.log.stat().st_size if self.log.exists() else 0
            self.child.signal(signal.SIGUSR1)

            def dumping() -> bool:  # faulthandler's header: the dump is being written
                with self.log.open("rb") as log:
                    log.seek(before)
                    return b"most recent call first" in log.read()

            with contextlib.suppress(AssertionError):  # best effort: the tail is shown either way
                wait_until(dumping, "the worker's stack dump", timeout_s=5, every_s=0.05)

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()

    def stop(self) -> int:
        assert self.child is not None
        self.child.signal(signal.SIGTERM)
        try:
            return self.child.wait(30)
        except subprocess.TimeoutExpired:
            self.dump_stacks()
            self.kill()
            raise AssertionError(f"worker did not stop on SIGTERM within 30s:\n{self.tail()}") from None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def wait_committed(
        self, kafka_config: Mapping[str, Any], topic: str, ends: Mapping[int, int], timeout_s: float = 90
    ) -> None:
        """Until the group has committed past every offset in `ends` (the worker commits only durable work)."""
        consumer = Consumer({**kafka_config, "group.id": self.group, "enable.auto.commit": False})
        try:
            wanted = [TopicPartition(topic, p) for p in ends]
            committed: dict[int, int] = {}

            def all_committed() -> bool:
                if self.process is not None and self.process.poll() is not None:
                    raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.tail()}")
                committed.clear()
                committed.update({tp.partition: tp.offset for tp in consumer.committed(wanted, timeout=10)})
                return all(committed.get(p, -1) > offset for p, offset in ends.items())

            wait_until(
                all_committed,
                "the worker to commit past every end",
                timeout_s=timeout_s,
                every_s=0.2,
                details=lambda: f"committed {committed} vs {dict(ends)}\n{self.tail()}",
            )
        finally:
            consumer.close()

    def committed_count(self, kafka_config: Mapping[str, Any], topic: str, partitions: Iterable[int]) -> int:
        consumer = Consumer({**kafka_config, "group.id": self.group, "enable.auto.commit": False})
        try:
            committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
            return sum(max(tp.offset, 0) for tp in committed)
        finally:
            consumer.close()


def latest_aggregates(kafka_config: Mapping[str, Any], topics: Topics) -> dict[str, UsageAggregate]:
    """The newest version of every aggregate key (what a compacted-topic reader keeps)."""
    latest: dict[str, UsageAggregate] = {}
    for key, value, _, _ in read_topic(kafka_config, topics.aggregates, idle_s=1.0):
        assert key is not None and value is not None
        aggregate = codec(UsageAggregate).decode(value)
        known = latest.get(key.decode())
        if known is None or aggregate.version > known.version:
            latest[key.decode()] = aggregate
    return latest


def aggregate_versions(
    kafka_config: Mapping[str, Any], topics: Topics
) -> dict[str, list[tuple[int, Decimal]]]:
    """Every (version, value) published per aggregate key, in log order."""
    found: dict[str, list[tuple[int, Decimal]]] = defaultdict(list)
    for key, value, _, _ in read_topic(kafka_config, topics.aggregates, idle_s=0.5):
        assert key is not None and value is not None
        aggregate = codec(UsageAggregate).decode(value)
        found[key.decode()].append((aggregate.version, aggregate.value))
    return found


def aggregate_versions_strictly_increase(kafka_config: Mapping[str, Any], topics: Topics) -> bool:
    """Without crashes: per key, in log order, every version is higher than the one before."""
    return all(
        all(a[0] < b[0] for a, b in pairwise(history))
        for history in aggregate_versions(kafka_config, topics).values()
    )


def aggregate_versions_name_one_value(kafka_config: Mapping[str, Any], topics: Topics) -> bool:
    """Across crashes: a version always carries the same value (a re-processed batch may re-send an
    older version after a newer one; consumers keep the highest)."""
    for history in aggregate_versions(kafka_config, topics).values():
        values: dict[int, Decimal] = {}
        for version, value in history:
            if values.setdefault(version, value) != value:
                return False
    return True


def limit_events(kafka_config: Mapping[str, Any], topics: Topics) -> list[LimitEvent]:
    return [
        codec(LimitEvent).decode(v) for _, v, _, _ in read_topic(kafka_config, topics.limits, idle_s=1.0) if v
    ]


def receipts(kafka_config: Mapping[str, Any], topics: Topics) -> list[DuplicateReceipt]:
    return [
        codec(DuplicateReceipt).decode(v)
        for _, v, _, _ in read_topic(kafka_config, topics.duplicates, idle_s=1.0)
        if v
    ]


def dead_letters(kafka_config: Mapping[str, Any], topics: Topics) -> list[DeadLetter]:
    return [
        codec(DeadLetter).decode(v) for _, v, _, _ in read_topic(kafka_config, topics.dlq, idle_s=1.0) if v
    ]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric(port: int, name: str) -> float:
    """Sum of a metric's samples on a worker's Prometheus endpoint (0 when it does not answer yet)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#") and line[len(name)] in " {"
    )


class AggregateWatcher:
    """Follows usage.aggregates and keeps the highest version per key, to wait for expected totals."""

    def __init__(self, kafka_config: Mapping[str, Any], topics: Topics) -> None:
        self.latest: dict[str, UsageAggregate] = {}
        self._codec = codec(UsageAggregate)
        self.follower = TopicFollower(
            kafka_config,
            [topics.aggregates],
            self._apply,
            name="aggregate-watcher",
            batch_size=20_000,
            probe_interval_s=math.inf,
        )

    def _apply(self, messages: list[Message]) -> None:
        for message in messages:
            if message.value() is None:
                continue
            aggregate = self._codec.decode(message.value())
            key = message.key().decode()
            known = self.latest.get(key)
            if known is None or aggregate.version > known.version:
                self.latest[key] = aggregate

    def poll(self) -> None:
        self.follower.poll(0.2)

    def figures(self) -> dict[str, tuple[Decimal, int]]:
        return {key: (a.value, a.event_count) for key, a in self.latest.items()}

    def wait_for(
        self,
        expected: Mapping[str, tuple[Decimal, int]],
        timeout_s: float = 120,
        workers: Iterable[Worker] = (),
    ) -> None:
        def reached() -> bool:  # self.poll() waits up to 0.2 s for records: the poll interval
            self.poll()
            if self.figures() == dict(expected):
                return True
            for worker in workers:
                if worker.process is not None and worker.process.poll() is not None:
                    raise AssertionError(f"worker exited with {worker.process.returncode}:\n{worker.tail()}")
            return False

        def wrong() -> str:
            got = self.figures()
            wrong = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
            extra = set(got) - set(expected)
            return f"{len(wrong)} totals wrong, {len(extra)} unexpected: {list(wrong.items())[:5]}"

        wait_until(reached, "the expected totals", timeout_s=timeout_s, every_s=0, details=wrong)

    def close(self) -> None:
        self.follower.close()


def durable_accounting(kafka_config: Mapping[str, Any], changelog_topic: str) -> dict[int, dict[str, int]]:
    """The last watermark of every usage.events partition, as metering stored it in its changelog."""
    import json

    found: dict[int, dict[str, int]] = {}
    for key, value, partition, _offset in read_topic(kafka_config, changelog_topic, idle_s=1.0):
        if key is None or value is None or not key.startswith(b"w"):
            continue
        owner = partition if key == b"w" else int(key[1:])
        state = json.loads(value)
        if owner not in found or state["input"] >= found[owner]["input"]:
            found[owner] = state
    return found


def records_per_partition(kafka_config: Mapping[str, Any], topic: str) -> dict[int, int]:
    counts: dict[int, int] = defaultdict(int)
    for _key, _value, partition, _offset in read_topic(kafka_config, topic, idle_s=1.0):
        counts[partition] += 1
    return dict(counts)


def assert_every_record_accounted(
    kafka_config: Mapping[str, Any], topics: Topics, changelog_topic: str
) -> dict[str, int]:
    """Every record of usage.events is durably one of accepted, duplicate, rejected, forwarded: per
    partition, the stored position is the log's end and the outcomes add up to it. Returns the sums."""
    accounting = durable_accounting(kafka_config, changelog_topic)
    in_log = records_per_partition(kafka_config, topics.events)
    sums = {"accepted": 0, "duplicates_counted": 0, "rejected": 0, "forwarded": 0, "gaps": 0}
    for partition, count in in_log.items():
        state = accounting.get(partition)
        assert state is not None, f"partition {partition}: {count} records, none accounted"
        assert state["input"] + 1 == count, (
            f"partition {partition}: {count} records, position {state['input']}"
        )
        outcomes = {name: state.get(name, 0) for name in sums}
        assert sum(outcomes.values()) == count, f"partition {partition}: {outcomes} vs {count} records"
        for name, value in outcomes.items():
            sums[name] += value
    return sums


def expected_totals(events: Iterable[UsageEvent], anchor: Any) -> dict[str, tuple[Decimal, int]]:
    """Independently: SUM and count of the distinct events per customer, meter and period."""
    from metergate.domain.periods import period_for
    from metergate.domain.records import ResetPeriod, aggregate_key

    totals: dict[str, tuple[Decimal, int]] = defaultdict(lambda: (Decimal(0), 0))
    seen: set[tuple[str, str]] = set()
    for event in events:
        if (event.customer_id, event.event_id) in seen:
            continue
        seen.add((event.customer_id, event.event_id))
        start = period_for(event.timestamp, anchor, ResetPeriod.MONTHLY).start
        key = aggregate_key(event.customer_id, event.meter, start)
        value, count = totals[key]
        totals[key] = (value + event.quantity, count + 1)
    return dict(totals)
