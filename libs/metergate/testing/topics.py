"""Read what is on a topic, the way a test wants it: everything, until nothing more arrives.

End offsets cannot be trusted on the embedded broker (tansu answers "latest" with the base offset
of the newest batch + 1, short of its last records), so "caught up" here means: every partition
read from the beginning, and no new record for `idle_s`, or `expect` records seen.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


def read_topic(
    client_config: Mapping[str, Any],
    topic: str,
    *,
    expect: int | None = None,
    idle_s: float = 2.0,
    timeout_s: float = 60.0,
) -> list[tuple[bytes | None, bytes | None, int, int]]:
    """Every record of `topic` as (key, value, partition, offset), read from the beginning.

    Stops when `expect` records were read (then waits `idle_s` more to catch extras), or when no
    record arrived for `idle_s`, or at `timeout_s`.
    """
    consumer = Consumer(
        {
            **client_config,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = metadata.topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list[tuple[bytes | None, bytes | None, int, int]] = []
        deadline = time.monotonic() + timeout_s
        last_seen = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.consume(10000, timeout=0.2)
            for message in batch:
                if message.error():
                    continue
                partition, offset = message.partition(), message.offset()
                assert partition is not None and offset is not None
                records.append((message.key(), message.value(), partition, offset))
            if batch:
                last_seen = time.monotonic()
            elif time.monotonic() - last_seen >= idle_s and (expect is None or len(records) >= expect):
                break
        return records
    finally:
        consumer.close()
