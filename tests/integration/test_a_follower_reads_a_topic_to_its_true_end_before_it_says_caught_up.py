"""The follower reads every record of a topic before it says caught up, even where the broker's
"latest" offset is short (tansu answers with the newest batch's base offset + 1), then keeps
following what is produced afterwards."""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import Producer

from metergate.kafka.follow import TopicFollower
from metergate.testing.waiting import wait_until

pytestmark = pytest.mark.integration


def test_follower_is_caught_up_only_with_every_record(kafka_config, topics):
    producer = Producer({**kafka_config, "linger.ms": 50, "batch.num.messages": 1000})
    expected = 0
    for burst in range(
        5
    ):  # several multi-record batches per partition: the tail of each is past "latest" on tansu
        for index in range(500):
            producer.produce(topics.snapshots, key=f"c{index}".encode(), value=f"{burst}:{index}".encode())
            expected += 1
        assert producer.flush(30) == 0
    seen: list[bytes] = []
    lock = threading.Lock()

    def on_records(messages):
        with lock:
            seen.extend(m.value() for m in messages)

    follower = TopicFollower(kafka_config, [topics.snapshots], on_records, name="test-follower")
    follower.start()
    try:
        assert follower.wait_caught_up(30)
        with lock:
            assert len(seen) == expected == 2500
        for index in range(7):
            producer.produce(topics.snapshots, key=b"late", value=f"late:{index}".encode())
        assert producer.flush(30) == 0
        wait_until(
            lambda: len(seen) == 2507, "records produced after catch-up followed", timeout_s=10, every_s=0.02
        )
        assert seen[-7:] == [f"late:{i}".encode() for i in range(7)]
        assert follower.last_contact is not None and follower.as_of is not None
    finally:
        follower.stop()
