"""`metergate topics`: create and list metergate's topics on the configured Kafka."""

from __future__ import annotations

import logging

import click

from metergate.kafka.topics import TOPIC_SPECS
from metergate.settings import KafkaSettings


@click.group()
def topics() -> None:
    """Topics metergate uses."""


@topics.command("create")
def create() -> None:
    """Create every topic that does not exist yet (METERGATE_KAFKA_* settings)."""
    from metergate.kafka.admin import ensure_topics

    kafka = KafkaSettings()
    # librdkafka's own log lines go to logging (shown with -v), not straight to stderr
    config = {**kafka.client_config(), "logger": logging.getLogger("metergate.kafka.client")}
    created = ensure_topics(config, kafka.topics, kafka.partitions, kafka.replication, timeout_s=10.0)
    click.echo(f"created {len(created)} topic(s): {', '.join(created) or '-'}")


@topics.command("list")
def list_() -> None:
    """The topics metergate expects, with cleanup policy and record kind."""
    kafka = KafkaSettings()
    for spec in TOPIC_SPECS:
        policy = "compact" if spec.compacted else "delete"
        click.echo(f"{kafka.topics.name(spec.name):32} {policy:8} {spec.doc}")
