"""Two metering workers share usage.events. One is SIGKILLed and started again on its data dir: it
takes back its own partitions in the same group generation (no JoinGroup, no rebalance, so nothing
waited for the dead process's session to expire and the other worker never held them). Then it is
killed again and kept down until the group has given all partitions to the other worker: its
recorded membership is stale, so it joins as a new member (never counting a partition the other
worker holds). Totals and accounting are exact throughout."""

from __future__ import annotations

import json
import random
from base64 import b64decode
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocol

from metergate.testing.waiting import wait_until
from tests.integration.metering_support import (
    AggregateWatcher,
    EventProducer,
    Worker,
    assert_every_record_accounted,
    expected_totals,
    free_port,
    publish,
)
from tests.integration.test_a_worker_joining_under_backlog_loses_nothing import events_of
from tests.integration.test_worker_killed_mid_stream_counts_every_event_once import ANCHOR, CATALOG

pytestmark = pytest.mark.integration

#: longer than the default (6 s), so that a restart on a loaded machine is still well inside it: the
#: assertions are on group generations, never on how long anything took
SESSION_TIMEOUT_S = 10
EVENTS_EACH = 3000


def membership(data_dir: Path) -> dict[str, Any] | None:
    """The membership a worker recorded: member id, generation and its partitions of usage.events."""
    try:
        state = json.loads((data_dir / "membership.json").read_text())
    except FileNotFoundError:
        return None
    assignment = ConsumerProtocol.ASSIGNMENT.decode(b64decode(state["assignment"]))
    return {
        "member_id": state["member_id"],
        "generation": state["generation"],
        "partitions": frozenset(tp.partition for tp in assignment.partitions()),
    }


def settled(*data_dirs: Path) -> bool:
    """Every worker recorded the same generation and between them they hold all 4 partitions once."""
    found = [membership(d) for d in data_dirs]
    if any(m is None for m in found):
        return False
    generations = {m["generation"] for m in found if m}
    held = [p for m in found if m for p in m["partitions"]]
    return len(generations) == 1 and sorted(held) == [0, 1, 2, 3]


def test_a_killed_worker_restarted_takes_its_partitions_back_without_waiting_for_its_session_to_expire(
    kafka_bootstrap: str, kafka_config: dict[str, Any], topics: Any, tmp_path: Path
) -> None:
    rng = random.Random(9)
    publish(CATALOG, kafka_config, topics)
    now = datetime.now(UTC).replace(microsecond=0)
    producer = EventProducer(kafka_config, topics)
    sent = []

    def produce(start: int) -> None:
        for event in events_of(rng, start, EVENTS_EACH, now):
            producer.send(event)
            sent.append(event)
        producer.flush()

    settings = {"session_timeout_s": SESSION_TIMEOUT_S, "batch_size": 500}
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a = Worker(kafka_bootstrap, topics, a_dir, metrics_port=free_port(), **settings)
    b = Worker(kafka_bootstrap, topics, b_dir, metrics_port=free_port(), **settings)
    watcher = AggregateWatcher(kafka_config, topics)
    try:
        a.start()
        b.start()
        wait_until(
            lambda: settled(a_dir, b_dir), "both workers to hold partitions in one generation", timeout_s=120
        )
        produce(0)
        a.wait_committed(kafka_config, topics.events, producer.end_offsets())
        before_a, before_b = membership(a_dir), membership(b_dir)
        assert before_a is not None and before_b is not None
        assert before_a["partitions"] and before_b["partitions"], (before_a, before_b)

        # 1. killed and started again at once: the same member, the same generation, the same partitions
        a.kill()
        a.start()
        produce(EVENTS_EACH)
        a.wait_committed(kafka_config, topics.events, producer.end_offsets())
        assert membership(a_dir) == before_a
        assert membership(b_dir) == before_b  # b was never rebalanced: it never held a's partitions
        watcher.wait_for(expected_totals(sent, ANCHOR), workers=[a, b])

        # 2. killed and kept down until its session expired and b holds everything: the recorded
        # membership is stale; a joins as a new member and the group splits the partitions again
        a.kill()
        wait_until(
            lambda: (m := membership(b_dir)) is not None and m["partitions"] == {0, 1, 2, 3},
            "the group to give all partitions to b",
            timeout_s=120,
        )
        taken_over = membership(b_dir)
        assert taken_over is not None and taken_over["generation"] > before_b["generation"]
        a.start()
        wait_until(
            lambda: settled(a_dir, b_dir) and membership(a_dir) != before_a,
            "a to join again as a new member",
            timeout_s=120,
        )
        rejoined = membership(a_dir)
        assert rejoined is not None
        assert rejoined["member_id"] != before_a["member_id"]
        assert rejoined["generation"] > taken_over["generation"]
        produce(2 * EVENTS_EACH)
        a.wait_committed(kafka_config, topics.events, producer.end_offsets())
        watcher.wait_for(expected_totals(sent, ANCHOR), workers=[a, b])
        sums = assert_every_record_accounted(kafka_config, topics, a.changelog)
        # 9,000 distinct events, none produced twice: every one accepted once
        assert sums == {"accepted": 9000, "duplicates_counted": 0, "rejected": 0, "forwarded": 0, "gaps": 0}
        assert a.stop() == 0, a.tail()
        assert b.stop() == 0, b.tail()
    finally:
        a.kill()
        b.kill()
        watcher.close()
