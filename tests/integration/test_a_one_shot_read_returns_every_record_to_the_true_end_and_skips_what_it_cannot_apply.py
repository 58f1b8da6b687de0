"""The one-shot readers of follow.py return every record from the offset asked for to the true end
(tansu's "latest" is short of the newest batch's tail), and a record an owner cannot apply is
skipped one way: a warning line naming topic, partition, offset and reason, one count in
`metergate_follower_records_skipped_total`, the owner's on_reject, then the next record."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from metergate.domain.records import EntitlementSnapshot
from metergate.errors import InvalidInput
from metergate.kafka.follow import read_partitions, read_topic
from metergate.wire.codec import codec
from metergate_services.rating.snapshots import SnapshotCache
from tests.integration.rating_support import snapshot

pytestmark = pytest.mark.integration


def _produce_in_bursts(kafka_config, topic: str, partition: int, bursts: int, per_burst: int) -> None:
    producer = Producer({**kafka_config, "linger.ms": 50, "batch.num.messages": 1000})
    for burst in range(bursts):  # multi-record batches: the tail of each is past "latest" on tansu
        for index in range(per_burst):
            producer.produce(topic, key=b"k", value=f"{burst}:{index}".encode(), partition=partition)
        assert producer.flush(30) == 0


def test_read_partitions_returns_every_record_from_the_start_offset_to_the_true_end(kafka_config, topics):
    _produce_in_bursts(kafka_config, topics.limits, partition=2, bursts=4, per_burst=300)
    expected = [f"{b}:{i}".encode() for b in range(4) for i in range(300)]

    found = read_partitions(kafka_config, [(topics.limits, 2, 250), (topics.limits, 1, 0)], idle_s=0.3)

    assert [value for _key, value, _offset in found[(topics.limits, 2)]] == expected[250:]
    assert [offset for _key, _value, offset in found[(topics.limits, 2)]] == list(range(250, 1200))
    assert found[(topics.limits, 1)] == []
    assert [value for _k, value, _p, _o in read_topic(kafka_config, topics.limits, idle_s=0.3)] == expected


def _skipped(reader: str, topic: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "metergate_follower_records_skipped_total", {"reader": reader, "topic": topic, "reason": reason}
    )
    return value or 0.0


def test_a_snapshot_rating_cannot_read_is_logged_counted_handed_over_and_skipped(
    kafka_config, topics, caplog
):
    encode = codec(EntitlementSnapshot).encode
    producer = Producer(kafka_config)
    producer.produce(topics.snapshots, key=b"a", value=encode(snapshot("a")), partition=0)
    producer.produce(topics.snapshots, key=b"bad", value=b"not avro", partition=0)
    producer.produce(topics.snapshots, key=b"b", value=encode(snapshot("b")), partition=0)
    assert producer.flush(30) == 0
    rejected: list[tuple[bytes | None, str]] = []

    def on_reject(message, error: InvalidInput) -> None:
        rejected.append((message.key(), error.reason))

    before = _skipped("rating-snapshots", topics.snapshots, "not_avro")
    cache = SnapshotCache(kafka_config, topics.snapshots, on_reject=on_reject)
    try:
        with caplog.at_level(logging.WARNING, logger="metergate.kafka.follow"):
            assert cache.catch_up(idle_s=0.3, timeout_s=30) == 2
    finally:
        cache.close()

    assert len(cache) == 2 and cache.get("a") is not None and cache.get("b") is not None
    assert rejected == [(b"bad", "not_avro")]
    assert _skipped("rating-snapshots", topics.snapshots, "not_avro") == before + 1
    [line] = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert line.startswith(
        f"rating-snapshots: skipped {topics.snapshots}[0]@1: not_avro: not an Avro single-object record"
    )
