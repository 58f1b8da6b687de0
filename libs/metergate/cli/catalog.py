"""`metergate catalog`: validate a catalog file and publish it (meters + entitlement snapshots)."""

from __future__ import annotations

import time
from pathlib import Path

import click
import yaml

from metergate.cli.reporting import BadSetup
from metergate.domain.catalog import Catalog, parse_catalog
from metergate.domain.records import EntitlementSnapshot, MeterDefinition, now_utc
from metergate.errors import CatalogError
from metergate.settings import KafkaSettings
from metergate.wire.codec import codec


class _CatalogYaml(yaml.SafeLoader):
    """YAML as the catalog wants it: dates stay text (the catalog reader parses them and names the
    field when they are wrong, e.g. `anchor: 2024-13-01`), and a key given twice is an error."""

    yaml_implicit_resolvers = {  # noqa: RUF012 - the attribute PyYAML reads, per loader class
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:  # type: ignore[override]
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {seen[key] + 1}): give each key once",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_catalog(path: Path) -> Catalog:
    """Read and validate a catalog file; CatalogError names the file and the path inside it."""
    try:
        document = yaml.load(path.read_text(), Loader=_CatalogYaml)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise CatalogError(f"{path}: {where}: {exc.problem}", reason="invalid_yaml") from None
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
    from metergate.kafka.producer import make_producer, send
    from metergate.kafka.topics import Topics

    topics = Topics(prefix)
    version = version if version is not None else time.time_ns() // 1_000_000
    producer = make_producer(client_config)
    meter_codec = codec(MeterDefinition)
    send(
        producer,
        topics.meters,
        ((meter.meter.encode(), meter_codec.encode(meter)) for meter in catalog.meters.values()),
    )
    snapshot_codec = codec(EntitlementSnapshot)
    send(
        producer,
        topics.snapshots,
        (
            (snapshot.customer_id.encode(), snapshot_codec.encode(snapshot))
            for snapshot in catalog.snapshots(version=version, updated_at=now_utc())
        ),
    )
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
        raise BadSetup(str(exc)) from None
    _summary(parsed)


@catalog.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def apply(file: Path) -> None:
    """Validate FILE, then publish its meters and one entitlement snapshot per subscribed customer."""
    try:
        parsed = load_catalog(file)
    except CatalogError as exc:
        raise BadSetup(str(exc)) from None
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
