"""Topic administration over confluent-kafka: create every metergate topic with its policy."""

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
    _wait_for_metadata(admin, created, timeout_s)
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
