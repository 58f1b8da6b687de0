"""The broker's raw produce and consume rate: the ceiling every metergate figure is compared with.

Produces pre-encoded records with the same producer settings as the SDK (idempotent, acks=all),
then reads them all back with the project's reader (`metergate.kafka.follow`; no decoding, no state)
until every record is counted.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from metergate.kafka.admin import create_topic
from metergate.kafka.follow import TopicFollower
from metergate.kafka.producer import DeliveryTracker, flush, make_producer, produce


@dataclass(frozen=True)
class Ceiling:
    records: int
    produce_per_s: float
    consume_per_s: float


def produce_all(config: dict[str, Any], topic: str, records: Sequence[tuple[bytes, bytes]]) -> float:
    """Send every (key, value); return records/s until the last one is acknowledged."""
    producer, tracker = make_producer(config), DeliveryTracker()
    started = time.perf_counter()
    for key, value in records:
        produce(producer, topic, key, value, tracker)
    flush(producer, tracker, topic=topic, timeout_s=120)
    elapsed = time.perf_counter() - started
    return len(records) / elapsed


def consume_all(
    config: dict[str, Any], topic: str, partitions: int, expected: int, timeout_s: float = 300
) -> float:
    """Read `expected` records from the beginning; return records/s from the first to the last."""
    seen, first, last = 0, 0.0, 0.0

    def count(messages: list[Message]) -> None:  # no decoding, no state: the raw rate
        nonlocal seen, first, last
        if not seen:
            first = time.perf_counter()
        seen += len(messages)
        last = time.perf_counter()

    follower = TopicFollower(
        config,
        [topic],
        count,
        name="ceiling",
        idle_s=0.0,
        probe_interval_s=math.inf,
        consumer_overrides={"fetch.max.bytes": 52428800, "max.partition.fetch.bytes": 10485760},
    )
    try:
        if not follower.catch_up(timeout_s, idle_s=0.0, min_records=expected):
            raise TimeoutError(f"read {seen} of {expected} records in {timeout_s} s")
    finally:
        follower.close()
    return seen / (last - first)


def measure_ceiling(
    config: dict[str, Any], records: Sequence[tuple[bytes, bytes]], partitions: int
) -> Ceiling:
    topic = f"bench.ceiling.{uuid.uuid4().hex[:8]}"
    create_topic(config, topic, partitions)
    produce_rate = produce_all(config, topic, records)
    consume_rate = consume_all(config, topic, partitions, len(records))
    return Ceiling(records=len(records), produce_per_s=produce_rate, consume_per_s=consume_rate)
