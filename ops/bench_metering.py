"""Benchmark of the metering worker, with the raw consume rates of the same broker in the same run.

    .venv/bin/python -m ops.bench_metering [--events 200000] [--live-events 50000] [--live-rate 10000]
    .venv/bin/python -m ops.bench_metering --only restart [--events 200000] [--restarts 5]

Uses METERGATE_KAFKA_BOOTSTRAP when set, else starts an embedded (tansu) broker of its own.
Phases, all on one topic set with a fresh prefix:

1. produce `events` usage events (10k customers, 3 meters, 2% duplicates) to usage.events;
2. raw consume rates of that same topic: confluent-kafka (librdkafka), stock Faust (one event per
   record, no processing: "consuming alone"), and Faust through the metering transport (one event
   per fetch, no processing);
3. the metering worker (a subprocess, as in production) on the backlog: events/s from its
   `metergate_events_consumed_total` metric, first to last processed record;
4. live: while the worker runs, produce `live_events` at `live_rate`/s to customers whose limits
   are crossed often, and measure event-to-limit-event latency (produce time of the crossing event
   to receipt of its limit event) p50 / p99;
5. recovery: SIGKILL the worker, restart it, and time restart -> a probe event committed; then the
   same with its data directory deleted (state rebuilt from the changelog); the worker's own
   start-up timeline (`metergate_startup_seconds{step}`) says where the time went;
6. scaling: two workers of a new app (own group, own state) on the whole topic, events/s of the two
   together and its ratio to the one worker of phase 3 (on one machine they share its cores with
   the broker).

`--only restart` runs phase 1, the worker on the backlog, then phase 5 `--restarts` times (the
median of each figure, and the breakdown of the median run).

Prints the figures; asserts nothing about time. `run_bench(...)` returns them as a dict.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from confluent_kafka import OFFSET_END, Consumer, Message, Producer, TopicPartition

from metergate.cli.catalog import publish_catalog
from metergate.domain.catalog import parse_catalog
from metergate.domain.records import LimitEvent, UsageEvent
from metergate.embedded.processes import ChildProcess, free_port
from metergate.kafka.admin import ensure_topics
from metergate.kafka.follow import TopicFollower
from metergate.kafka.partitioner import LIBRDKAFKA_PARTITIONER
from metergate.kafka.producer import DeliveryTracker, flush, produce
from metergate.kafka.topics import Topics
from metergate.wire.codec import codec
from ops.ceiling import consume_all

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4


#: producers partition as the SDK does (usage.events' documented partitioner), so no record is forwarded
MURMUR2 = {"partitioner": LIBRDKAFKA_PARTITIONER}


def catalog(customers: int, live_customers: int) -> dict[str, Any]:
    return {
        "meters": {
            "api_calls": {"aggregation": "SUM"},
            "tokens": {"aggregation": "SUM"},
            "users": {"aggregation": "UNIQUE_COUNT", "unique_property": "user_id"},
        },
        "features": {"api_calls": {"kind": "metered", "meter": "api_calls"}},
        "plans": {
            "pro": {
                "features": {
                    "api_calls": {"included": 500, "limit": 5000, "enforcement": "hard", "thresholds": [80]}
                }
            },
            "tiny": {
                "features": {"api_calls": {"limit": 20, "enforcement": "hard", "thresholds": [50, 80, 100]}}
            },
        },
        "subscriptions": {
            **{f"c{i}": {"plan": "pro", "anchor": "2024-01-15"} for i in range(customers)},
            **{f"live{i}": {"plan": "tiny", "anchor": "2024-01-15"} for i in range(live_customers)},
        },
    }


def backlog(count: int, customers: int, now: datetime) -> Iterator[tuple[bytes, bytes]]:
    """The benchmark's usage events as (key, value): `customers` customers, 3 meters, 2% exact
    duplicates of earlier events (the same every run)."""
    rng = random.Random(1)
    encode = codec(UsageEvent).encode_dict
    meters = ("api_calls", "tokens", "users")
    sent: list[tuple[bytes, bytes]] = []
    for index in range(count):
        if sent and rng.random() < 0.02:
            yield sent[rng.randrange(len(sent))]  # an exact duplicate
            continue
        customer = f"c{rng.randrange(customers)}"
        value = encode(
            {
                "event_id": f"e{index}",
                "customer_id": customer,
                "subject_id": None,
                "meter": meters[index % 3],
                "quantity": Decimal(rng.randrange(1, 1000)) / 100,
                "timestamp": now,
                "properties": {"user_id": f"u{rng.randrange(50)}"},
                "source": None,
            }
        )
        if len(sent) < 50_000:
            sent.append((customer.encode(), value))
        yield customer.encode(), value


def produce_backlog(config: Mapping[str, Any], topic: str, count: int, customers: int) -> float:
    producer = Producer(
        {**config, "linger.ms": 20, "batch.num.messages": 10000, "enable.idempotence": True, **MURMUR2}
    )
    tracker = DeliveryTracker()
    started = time.monotonic()
    for key, value in backlog(count, customers, datetime.now(UTC)):
        produce(producer, topic, key, value, tracker)
        producer.poll(0)
    flush(producer, tracker, topic=topic, timeout_s=60)
    return time.monotonic() - started


def confluent_consume_rate(config: Mapping[str, Any], topic: str, count: int) -> float:
    """The broker's raw consume rate of `topic` (the same measure as the benchmark's ceiling)."""
    return consume_all(dict(config), topic, PARTITIONS, count, timeout_s=120)


def faust_consume_rate(bootstrap: str, topic: str, count: int, batched: bool) -> float:
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.bench_metering",
            "faust-consume",
            bootstrap,
            topic,
            str(count),
            str(int(batched)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    # Faust's worker redirects stdout into its log (stderr): look in both
    text = output.stdout + output.stderr
    rates = [line.split("RATE ", 1)[1].split()[0] for line in text.splitlines() if "RATE " in line]
    return float(rates[-1])


def _faust_consume(bootstrap: str, topic: str, count: int, batched: bool) -> None:
    """Child process: a Faust app that only counts records (`batched`: through the metering transport)."""
    import logging

    import faust

    from metergate_services.metering.transport import PASSTHROUGH, batching_app_class

    logging.disable(logging.INFO)
    app_class = batching_app_class(frozenset({topic})) if batched else faust.App
    data = tempfile.mkdtemp(prefix="bench-faust-")
    app = app_class(
        f"bench-consume-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=data,
        web_enabled=False,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        broker_rebalance_timeout=10,
        broker_max_poll_records=5000 if batched else None,
        loghandlers=[],
    )
    source = app.topic(
        topic,
        key_serializer=PASSTHROUGH if batched else "raw",
        value_serializer=PASSTHROUGH if batched else "raw",
        acks=not batched,
    )
    state: dict[str, Any] = {"n": 0, "t0": None}

    @app.agent(source)
    async def consume(stream: Any) -> None:
        async for event in stream.events():
            if state["t0"] is None:
                state["t0"] = time.monotonic()
            state["n"] += sum(len(v) for v in event.value.values()) if batched else 1
            if state["n"] >= count:
                print(f"\nRATE {state['n'] / (time.monotonic() - state['t0'])}", flush=True)
                os._exit(0)

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


class WorkerProcess:
    def __init__(
        self, bootstrap: str, topics: Topics, data_dir: Path, metrics_port: int, app_id: str | None = None
    ) -> None:
        self.env = {
            **os.environ,
            "METERGATE_KAFKA_BOOTSTRAP": bootstrap,
            "METERGATE_KAFKA_TOPIC_PREFIX": topics.prefix,
            "METERGATE_METERING_DATA_DIR": str(data_dir),
            "METERGATE_METRICS_PORT": str(metrics_port),
            **({"METERGATE_METERING_APP_ID": app_id} if app_id else {}),
        }
        self.port = metrics_port
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.child = ChildProcess(
            "metering worker",
            [sys.executable, "-m", "metergate_services.metering.main"],
            self.log,
            env=self.env,
            cwd=ROOT,
        )

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.child.process

    def start(self) -> None:
        self.child.start()

    def consumed(self) -> float | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=1) as response:
                text = response.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("metergate_events_consumed_total "):
                return float(line.split()[1])
        return None

    def startup(self) -> dict[str, float]:
        """The worker's start-up timeline: seconds from its process start to each step."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=1) as response:
                text = response.read().decode()
        except OSError:
            return {}
        steps = {}
        for line in text.splitlines():
            if line.startswith('metergate_startup_seconds{step="'):
                name, value = line[len('metergate_startup_seconds{step="') :].split('"} ')
                steps[name] = float(value)
        cpu = steps.pop("cpu", None)
        return {**dict(sorted(steps.items(), key=lambda item: item[1])), "cpu": cpu} if cpu else steps

    def kill(self) -> None:
        self.child.kill()

    def stop(self) -> None:
        self.child.stop(30)


def committed(config: Mapping[str, Any], group: str, topic: str) -> int:
    consumer = Consumer({**config, "group.id": group, "enable.auto.commit": False})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return sum(max(tp.offset, 0) for tp in found)
    finally:
        consumer.close()


def total_records(config: Mapping[str, Any], topic: str) -> int:
    """Records on the topic, counted by reading it to its true end (`metergate.kafka.follow`)."""
    seen = 0

    def count(messages: list[Message]) -> None:
        nonlocal seen
        seen += len(messages)

    reader = TopicFollower(config, [topic], count, name="bench-count", idle_s=1.0, probe_interval_s=math.inf)
    try:
        if not reader.catch_up(300):
            raise TimeoutError(f"{topic} not read to its end in 300 s")
    finally:
        reader.close()
    return seen


def wait_committed(
    config: Mapping[str, Any], group: str, topic: str, target: int, timeout_s: float = 300
) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if committed(config, group, topic) >= target:
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(f"group {group} did not commit {target} records within {timeout_s}s")


def run_bench(
    bootstrap: str | None = None,
    *,
    events: int = 200_000,
    live_events: int = 50_000,
    live_rate: int = 10_000,
    only: str | None = None,
    restarts: int = 1,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-metering-"))
    broker = None
    if bootstrap is None:
        from metergate.embedded.broker import EmbeddedBroker

        broker = EmbeddedBroker(workdir / "broker")
        broker.start()
        bootstrap = broker.bootstrap
    config = {"bootstrap.servers": bootstrap}
    topics = Topics(prefix=f"bench{uuid.uuid4().hex[:6]}.")
    ensure_topics(config, topics, PARTITIONS)
    customers, live_customers = 10_000, 2_000
    figures: dict[str, Any] = {"events": events, "partitions": PARTITIONS}
    worker = WorkerProcess(bootstrap, topics, workdir / "worker", free_port())
    group = f"{topics.prefix}metergate-metering"
    try:
        publish_catalog(parse_catalog(catalog(customers, live_customers)), config, prefix=topics.prefix)
        figures["produce_s"] = round(produce_backlog(config, topics.events, events, customers), 2)
        if only == "restart":
            worker.start()
            backlog = backlog_rate([worker], events)
            figures["metering_per_s"] = round(backlog.per_s)
            figures["metering_cpu_us_per_event"] = round(backlog.cpu_us_per_event, 1)
            wait_committed(config, group, topics.events, total_records(config, topics.events))
            figures.update(recovery_times(config, topics, worker, group, rounds=restarts))
            return figures
        figures["raw_consume_confluent_per_s"] = round(confluent_consume_rate(config, topics.events, events))
        figures["raw_consume_faust_per_record_per_s"] = round(
            faust_consume_rate(bootstrap, topics.events, events, False)
        )
        figures["raw_consume_faust_batched_per_s"] = round(
            faust_consume_rate(bootstrap, topics.events, events, True)
        )

        worker.start()
        backlog = backlog_rate([worker], events)
        rate = backlog.per_s
        figures["metering_per_s"] = round(rate)
        figures["metering_cpu_us_per_event"] = round(backlog.cpu_us_per_event, 1)
        figures["ratio_to_faust_per_record"] = round(rate / figures["raw_consume_faust_per_record_per_s"], 2)
        figures["ratio_to_faust_batched"] = round(rate / figures["raw_consume_faust_batched_per_s"], 2)
        figures["ratio_to_confluent"] = round(rate / figures["raw_consume_confluent_per_s"], 3)
        backlog_total = total_records(config, topics.events)
        wait_committed(config, group, topics.events, backlog_total)

        figures.update(live_latency(config, topics, live_events, live_rate, live_customers))
        figures.update(recovery_times(config, topics, worker, group))
        worker.stop()
        figures.update(two_workers(bootstrap, topics, workdir, total_records(config, topics.events), rate))
    finally:
        worker.stop()
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return figures


class Backlog(NamedTuple):
    """How fast workers went through a backlog, and the CPU it cost them."""

    per_s: float  # events/s, wall clock
    cpu_us_per_event: float  # the workers' CPU time (user + system, every thread) per event


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far, all its threads (Linux: /proc/PID/stat utime + stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backlog_rate(workers: list[WorkerProcess], events: int, timeout_s: float = 600) -> Backlog:
    """Events/s of `workers` together on the backlog: the sum of their consumed counters between
    the first sample that counted something and the last that had not counted everything (the
    workers were busy all along in between, so the rate does not depend on the polling interval).
    The CPU the workers spent between the same two samples, per event, is the figure that does not
    depend on what else the machine runs.

    Polled 4 times a second: a scrape renders every metric of the worker (~2.5 ms), and 20 scrapes
    a second took ~5% of the worker's time away from the figure it measures."""
    samples: list[tuple[float, float, float]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for worker in workers:
            if worker.process is not None and worker.process.poll() is not None:
                raise RuntimeError(f"a worker exited: {worker.log.read_text()[-3000:]}")
        value = sum(worker.consumed() or 0.0 for worker in workers)
        cpu = sum(cpu_seconds(worker.process.pid) for worker in workers if worker.process is not None)
        samples.append((time.monotonic(), value, cpu))
        if value >= events:
            break
        time.sleep(0.25)
    busy = [sample for sample in samples if 0 < sample[1] < events]
    if len(busy) < 2:  # a backlog done within a few samples: first counted to done
        busy = [sample for sample in samples if sample[1] > 0][:1] + samples[-1:]
    assert busy, workers[0].log.read_text()[-2000:]
    (t0, v0, c0), (t1, v1, c1) = busy[0], busy[-1]
    if t1 <= t0 or v1 <= v0:
        return Backlog(0.0, 0.0)
    return Backlog((v1 - v0) / (t1 - t0), (c1 - c0) / (v1 - v0) * 1e6)


def two_workers(bootstrap: str, topics: Topics, workdir: Path, events: int, one: float) -> dict[str, Any]:
    """Two workers of a new app (its own group and state) on the same backlog, against one."""
    pair = [
        WorkerProcess(bootstrap, topics, workdir / f"pair{index}", free_port(), app_id="bench-pair")
        for index in range(2)
    ]
    try:
        for worker in pair:
            worker.start()
        rate = backlog_rate(pair, events).per_s
    finally:
        for worker in pair:
            worker.stop()
    return {
        "metering_two_workers_per_s": round(rate),
        "scaling_two_to_one": round(rate / one, 2) if one else None,
    }


def live_latency(
    config: Mapping[str, Any], topics: Topics, count: int, rate: int, live_customers: int
) -> dict[str, Any]:
    produced_at: dict[str, float] = {}
    received: list[tuple[str, float]] = []
    limit_codec = codec(LimitEvent)

    def arrived(messages: list[Message]) -> None:
        at = time.time()
        received.extend((limit_codec.decode(m.value()).event_id or "", at) for m in messages if m.value())

    tail = TopicFollower(
        config,
        (),
        arrived,
        partitions=[(topics.limits, p, OFFSET_END) for p in range(PARTITIONS)],
        name="bench-limits",
        batch_size=1000,
        probe_interval_s=math.inf,
        # the embedded broker holds a fetch for the full wait even with records there
        consumer_overrides={"fetch.wait.max.ms": 10},
    )
    tail.start()
    time.sleep(1.0)
    encode = codec(UsageEvent).encode_dict
    # linger 5 ms like the SDK (make_producer), so records reach the broker in batches as they would
    producer = Producer({**config, "linger.ms": 5, "enable.idempotence": True, **MURMUR2})
    tracker = DeliveryTracker()
    started = time.monotonic()
    for index in range(count):
        customer = f"live{index % live_customers}"
        event_id = f"live-{index}"
        value = encode(
            {
                "event_id": event_id,
                "customer_id": customer,
                "subject_id": None,
                "meter": "api_calls",
                "quantity": Decimal(1),
                "timestamp": datetime.now(UTC),
                "properties": {},
                "source": None,
            }
        )
        produced_at[event_id] = time.time()
        produce(producer, topics.events, customer.encode(), value, tracker)
        producer.poll(0)
        ahead = (index + 1) / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    flush(producer, tracker, topic=topics.events, timeout_s=30)
    achieved = count / (time.monotonic() - started)
    time.sleep(3.0)
    tail.stop()
    latencies = sorted(at - produced_at[event_id] for event_id, at in received if event_id in produced_at)
    if not latencies:
        return {"live_rate_per_s": round(achieved), "limit_events": 0}
    return {
        "live_rate_per_s": round(achieved),
        "limit_events": len(latencies),
        "limit_latency_p50_s": round(statistics.median(latencies), 3),
        "limit_latency_p99_s": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 3),
        "limit_latency_max_s": round(latencies[-1], 3),
    }


def recovery_times(
    config: Mapping[str, Any], topics: Topics, worker: WorkerProcess, group: str, rounds: int = 1
) -> dict[str, Any]:
    """SIGKILL, restart, until a probe event is committed: with the data dir kept, then deleted,
    `rounds` times each; the median, and where the time of the median run went."""
    runs: dict[str, list[tuple[float, dict[str, float]]]] = {}
    encode = codec(UsageEvent).encode
    producer = Producer({**config, "enable.idempotence": True, **MURMUR2})
    tracker = DeliveryTracker()
    for _ in range(rounds):
        for label, wipe in (
            ("recovery_after_sigkill_s", False),
            ("recovery_after_sigkill_wiped_data_dir_s", True),
        ):
            worker.kill()
            if wipe:
                shutil.rmtree(Path(worker.env["METERGATE_METERING_DATA_DIR"]) / "rocksdb", ignore_errors=True)
            before = total_records(config, topics.events)
            restarted = time.monotonic()
            worker.start()
            event = UsageEvent(
                event_id=f"probe-{uuid.uuid4().hex}",
                customer_id="c1",
                meter="api_calls",
                quantity=Decimal(1),
                timestamp=datetime.now(UTC),
            )
            produce(producer, topics.events, b"c1", encode(event), tracker)
            flush(producer, tracker, topic=topics.events, timeout_s=10)
            done = wait_committed(config, group, topics.events, before + 1, timeout_s=300)
            runs.setdefault(label, []).append((round(done - restarted, 2), worker.startup()))
    results: dict[str, Any] = {}
    for label, found in runs.items():
        results[label] = round(statistics.median(run[0] for run in found), 2)
        if rounds > 1:
            results[f"{label}_runs"] = [run[0] for run in found]
        # the worker's timeline of the run closest to the median
        results[f"{label}_steps"] = min(found, key=lambda run: abs(run[0] - results[label]))[1]
    return results


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "faust-consume":
        _faust_consume(sys.argv[2], sys.argv[3], int(sys.argv[4]), bool(int(sys.argv[5])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--live-events", type=int, default=50_000)
    parser.add_argument("--live-rate", type=int, default=10_000)
    parser.add_argument("--only", choices=["restart"], help="only the backlog and the restart phase")
    parser.add_argument("--restarts", type=int, default=1, help="rounds of the restart phase (median)")
    args = parser.parse_args()
    figures = run_bench(
        os.environ.get("METERGATE_KAFKA_BOOTSTRAP"),
        events=args.events,
        live_events=args.live_events,
        live_rate=args.live_rate,
        only=args.only,
        restarts=args.restarts,
    )
    width = max(len(name) for name in figures)
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
