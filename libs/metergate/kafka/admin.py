"""Topic administration over confluent-kafka: the one way metergate creates topics.

`ensure_topics` creates every metergate topic with its policy (`metergate topics create`, the dev
stack, the tests' `topics` fixture, the benchmarks); `create_topic` creates one other topic (a
benchmark's, a test's, a service's own). Both accept a topic that already exists and return once
the metadata shows what was asked for.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from metergate.kafka.topics import TOPIC_SPECS, Topics


def topic_config(compacted: bool) -> dict[str, str]:
    if compacted:
        return {"cleanup.policy": "compact"}
    return {"cleanup.policy": "delete"}


def ensure_topics(
    client_config: Mapping[str, Any],
    topics: Topics,
    partitions: int,
    replication: int = 1,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create every topic of `topics` that does not exist yet; return the names created."""
    admin = AdminClient(dict(client_config))
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [
        NewTopic(
            topics.name(spec.name),
            num_partitions=partitions if spec.partitioned else 1,
            replication_factor=replication,
            config=topic_config(spec.compacted),
        )
        for spec in TOPIC_SPECS
        if topics.name(spec.name) not in existing
    ]
    return _create(admin, wanted, timeout_s)


def create_topic(
    client_config: Mapping[str, Any],
    name: str,
    partitions: int,
    *,
    replication: int = 1,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> bool:
    """Create one topic (a benchmark's, a test's, a service's own state topic) unless it exists;
    True if this call created it. Returns once the topic is visible in the metadata."""
    admin = AdminClient(dict(client_config))
    topic = NewTopic(
        name, num_partitions=partitions, replication_factor=replication, config=dict(config or {})
    )
    return name in _create(admin, [topic], timeout_s)


def _create(admin: AdminClient, wanted: list[NewTopic], timeout_s: float) -> list[str]:
    """The one creation path: create, accept "already exists", wait until the metadata shows them."""
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    _wait_for_metadata(admin, [topic.topic for topic in wanted], timeout_s)
    return created


def _wait_for_metadata(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        known = admin.list_topics(timeout=timeout_s).topics
        if all(name in known and known[name].partitions for name in names):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topics not visible in metadata after {timeout_s} s: {names}")


def delete_topics(client_config: Mapping[str, str], names: list[str], timeout_s: float = 30.0) -> None:
    admin = AdminClient(dict(client_config))
    for future in admin.delete_topics(names, request_timeout=timeout_s).values():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
