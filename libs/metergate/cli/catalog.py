"""`metergate catalog`: validate a catalog file and publish it (meters + entitlement snapshots)."""

from __future__ import annotations

import time
from pathlib import Path

import click
import yaml

from metergate.domain.catalog import Catalog, parse_catalog
from metergate.domain.records import EntitlementSnapshot, MeterDefinition, now_utc
from metergate.errors import CatalogError, DeliveryError
from metergate.settings import KafkaSettings
from metergate.wire.codec import codec


def load_catalog(path: Path) -> Catalog:
    """Read and validate a catalog file; CatalogError names the file and the path inside it."""
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}", reason="invalid_yaml") from None
    return parse_catalog(document, source=str(path))


def publish_catalog(
    catalog: Catalog, client_config: dict[str, str], *, prefix: str = "", version: int | None = None
) -> int:
    """Publish meters to catalog.meters and one snapshot per subscribed customer; returns the version.

    The snapshot version defaults to the current time in milliseconds, so every apply publishes a
    higher version than the one before it (consumers keep the highest version per customer).
    """
    from metergate.kafka.producer import DeliveryTracker, make_producer, produce
    from metergate.kafka.topics import Topics

    topics = Topics(prefix)
    version = version if version is not None else time.time_ns() // 1_000_000
    producer, tracker = make_producer(client_config), DeliveryTracker()
    meter_codec = codec(MeterDefinition)
    for meter in catalog.meters.values():
        produce(producer, topics.meters, meter.meter.encode(), meter_codec.encode(meter), tracker)
    snapshot_codec = codec(EntitlementSnapshot)
    for snapshot in catalog.snapshots(version=version, updated_at=now_utc()):
        produce(
            producer,
            topics.snapshots,
            snapshot.customer_id.encode(),
            snapshot_codec.encode(snapshot),
            tracker,
        )
    remaining = producer.flush(30)
    tracker.raise_failures()
    if remaining:
        raise DeliveryError(f"catalog not fully published: {remaining} record(s) unacknowledged after 30 s")
    return version


@click.group("catalog")
def catalog() -> None:
    """Meters, features, plans and subscriptions from a catalog file."""


@catalog.command("validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def validate(file: Path) -> None:
    """Check FILE and print what it defines."""
    try:
        parsed = load_catalog(file)
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from None
    _summary(parsed)


@catalog.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def apply(file: Path) -> None:
    """Validate FILE, then publish its meters and one entitlement snapshot per subscribed customer."""
    try:
        parsed = load_catalog(file)
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from None
    settings = KafkaSettings()
    version = publish_catalog(parsed, settings.client_config(), prefix=settings.topic_prefix)
    _summary(parsed)
    click.echo(
        f"published {len(parsed.meters)} meters and {len(parsed.subscriptions)} snapshots (version {version})"
    )


def _summary(parsed: Catalog) -> None:
    versions = sum(len(v) for v in parsed.plans.values())
    click.echo(
        f"{len(parsed.meters)} meters, {len(parsed.features)} features, {len(parsed.plans)} plans "
        f"({versions} versions), {len(parsed.subscriptions)} subscriptions"
    )
