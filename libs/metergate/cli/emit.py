"""`metergate emit`: send one usage event from flags, or many from a JSONL file."""

from __future__ import annotations

import json
import sys
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from metergate.cli.reporting import BadSetup
from metergate.errors import DeliveryError, InvalidEvent
from metergate.settings import KafkaSettings


def _producer(bootstrap: str | None, source: str) -> Any:
    from metergate.sdk import UsageProducer

    kafka = KafkaSettings()
    if bootstrap:
        kafka = kafka.model_copy(update={"bootstrap": bootstrap})
    if not kafka.bootstrap:
        raise click.UsageError(
            "no Kafka to send to: set METERGATE_KAFKA_BOOTSTRAP or pass --bootstrap "
            "(with `metergate dev up` running: source .metergate/stack.env)"
        )
    return UsageProducer(kafka.client_config(), kafka.topics.events, source=source)


def _parse_properties(values: tuple[str, ...]) -> dict[str, str]:
    properties = {}
    for value in values:
        name, sep, content = value.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {value!r}", param_hint="--property")
        properties[name] = content
    return properties


@click.command("emit")
@click.option("--customer", "customer_id", help="customer_id of the event")
@click.option("--meter", help="meter key, e.g. api_calls")
@click.option("--quantity", help="decimal quantity, e.g. 1 or 0.25")
@click.option(
    "--event-id",
    help="idempotency key; without it a random UUID is generated and printed, so running the "
    "command again counts the usage again (pass the same --event-id to retry safely)",
)
@click.option("--timestamp", help="event time, ISO 8601 with offset (default: now, as for JSONL lines)")
@click.option("--subject", "subject_id", help="team or user inside the account")
@click.option("--property", "properties", multiple=True, help="NAME=VALUE dimension, repeatable")
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSONL file, one event per line: customer_id, meter, quantity, optional event_id, "
    "timestamp (default now), subject_id, properties, source",
)
@click.option("--bootstrap", help="Kafka bootstrap servers (default: METERGATE_KAFKA_BOOTSTRAP)")
@click.option("--source", default="metergate-emit", show_default=True)
@click.option("--no-progress", is_flag=True, help="no progress bar")
def emit(
    customer_id: str | None,
    meter: str | None,
    quantity: str | None,
    event_id: str | None,
    timestamp: str | None,
    subject_id: str | None,
    properties: tuple[str, ...],
    file: Path | None,
    bootstrap: str | None,
    source: str,
    no_progress: bool,
) -> None:
    """Send usage events to usage.events. Invalid events are never sent: each is reported with its field."""
    if file is not None:
        if customer_id or meter or quantity or event_id:
            raise click.UsageError("give either --file or the event flags, not both")
        _emit_file(file, bootstrap, source, no_progress)
        return
    missing = [
        flag
        for flag, value in (("--customer", customer_id), ("--meter", meter), ("--quantity", quantity))
        if not value
    ]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or use --file events.jsonl)")
    when = None
    if timestamp:
        try:
            when = datetime.fromisoformat(timestamp)
        except ValueError:
            raise click.BadParameter(
                f"expected ISO 8601 with offset, got {timestamp!r}", param_hint="--timestamp"
            ) from None
    from metergate.sdk.producer import build_event

    try:
        event = build_event(
            customer_id=customer_id,
            meter=meter,
            quantity=quantity,
            event_id=str(uuid.uuid4()) if event_id is None else event_id,  # generated on purpose
            timestamp=when,
            subject_id=subject_id,
            properties=_parse_properties(properties),
            source=source,
        )
    except InvalidEvent as error:
        raise BadSetup(f"event rejected, nothing sent: {error}") from None
    try:
        with _producer(bootstrap, source) as usage:
            usage.send(event)
    except DeliveryError as error:
        raise click.ClickException(f"not delivered: {error}") from None
    click.echo(
        f"sent {event.event_id}: {event.customer_id} {event.meter} {event.quantity} at {event.timestamp.isoformat()}"
    )


def _emit_file(path: Path, bootstrap: str | None, source: str, no_progress: bool) -> None:
    from tqdm import tqdm

    from metergate.domain.records import now_utc
    from metergate.sdk.producer import parse_event

    sent = 0
    rejected: list[tuple[int, str, str]] = []  # (line, reason, message)
    lines = path.read_text().splitlines()
    with _producer(bootstrap, source) as usage:
        progress = tqdm(lines, desc=f"emit {path.name}", unit="event", disable=no_progress, file=sys.stderr)
        for number, line in enumerate(progress, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                rejected.append((number, "invalid_json", f"not JSON: {exc.msg} at column {exc.colno}"))
                continue
            if not isinstance(data, dict):
                rejected.append(
                    (number, "invalid_json", f"expected a JSON object, got {type(data).__name__}")
                )
                continue
            data.setdefault("source", source)
            if data.get("timestamp") is None:  # one rule with `--timestamp`: no event time means now
                data["timestamp"] = now_utc().isoformat()
            try:
                usage.send(parse_event(data))
            except InvalidEvent as error:
                rejected.append((number, error.reason, str(error)))
                continue
            sent += 1
        try:
            usage.flush()
        except DeliveryError as error:
            raise click.ClickException(f"not delivered: {error}") from None
    click.echo(f"sent {sent}, rejected {len(rejected)} of {sent + len(rejected)} events from {path}")
    if rejected:
        for reason, count in sorted(Counter(reason for _, reason, _ in rejected).items()):
            click.echo(f"  {reason}: {count}")
        for number, _, message in rejected[:50]:
            click.echo(f"  line {number}: {message}", err=True)
        if len(rejected) > 50:
            click.echo(f"  ... and {len(rejected) - 50} more", err=True)
        sys.exit(1)
