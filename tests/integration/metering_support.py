"""Helpers of the metering integration tests: a worker subprocess, producing, reading results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from metergate.cli.catalog import publish_catalog
from metergate.domain.catalog import parse_catalog
from metergate.domain.records import DeadLetter, DuplicateReceipt, LimitEvent, UsageAggregate, UsageEvent
from metergate.kafka.partitioner import LIBRDKAFKA_PARTITIONER
from metergate.kafka.topics import Topics
from metergate.testing.topics import read_topic
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
            {**kafka_config, "linger.ms": 5, "enable.idempotence": True, "partitioner": LIBRDKAFKA_PARTITIONER}
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

    def __init__(self, kafka_bootstrap: str, topics: Topics, data_dir: Path, **settings: Any) -> None:
        self.env = {
            **os.environ,
            "METERGATE_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "METERGATE_KAFKA_TOPIC_PREFIX": topics.prefix,
            "METERGATE_METERING_DATA_DIR": str(data_dir),
            "METERGATE_METERING_RECOVERY_IDLE_S": "0.3",
            "METERGATE_LOG_LEVEL": os.environ.get("METERGATE_TEST_WORKER_LOG_LEVEL", "WARNING"),
        }
        self.env.update({f"METERGATE_METERING_{k.upper()}": str(v) for k, v in settings.items()})
        self.log = data_dir.parent / f"{data_dir.name}-worker.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.group = f"{topics.prefix}metergate-metering"

    def start(self, **settings: Any) -> Worker:
        env = dict(self.env)
        for key in [k for k in env if k.startswith("METERGATE_METERING_CRASH")]:
            del env[key]
        env.update({f"METERGATE_METERING_{k.upper()}": str(v) for k, v in settings.items()})
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "metergate_services.metering.main"],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_exit(self, timeout_s: float = 60) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.dump_stacks()
            raise AssertionError(f"worker still running after {timeout_s}s:\n{self.tail()}") from None

    def dump_stacks(self) -> None:
        """Ask a stuck worker for every thread's stack (faulthandler on SIGUSR1) into its log."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGUSR1)
            time.sleep(1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
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
            deadline = time.monotonic() + timeout_s
            wanted = [TopicPartition(topic, p) for p in ends]
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.tail()}")
                committed = {tp.partition: tp.offset for tp in consumer.committed(wanted, timeout=10)}
                if all(committed.get(p, -1) > offset for p, offset in ends.items()):
                    return
                time.sleep(0.2)
            raise AssertionError(
                f"not all committed within {timeout_s}s: {committed} vs {dict(ends)}\n{self.tail()}"
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
