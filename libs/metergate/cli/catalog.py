"""`metergate catalog`: validate a catalog file and publish it (meters + entitlement snapshots)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import yaml

from metergate.cli.reporting import BadSetup
from metergate.domain.catalog import Catalog, parse_catalog
from metergate.domain.records import EntitlementSnapshot, MeterDefinition, now_utc
from metergate.errors import CatalogError, InvalidInput
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
    """Publish meters to catalog.meters and one snapshot per subscribed customer (its plan version,
    negotiated values, add-ons and price overrides resolved); returns the version.

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
@click.option(
    "--to",
    "target",
    type=click.Choice(["auto", "postgres", "kafka"]),
    default="auto",
    show_default=True,
    help="postgres: a diff against PostgreSQL (`catalog plan FILE` prints it first), new versions only, "
    "then the outbox relayed; kafka: publish the file's snapshots straight to Kafka (no system of record); "
    "auto: postgres when a database is configured (METERGATE_DATABASE_URL or a running `metergate dev up`).",
)
def apply(file: Path, target: str) -> None:
    """Apply FILE: features and plan versions it adds, subscriptions it adds or changes."""
    from metergate.settings import DatabaseSettings

    try:
        parsed = load_catalog(file)
    except CatalogError as exc:
        raise BadSetup(str(exc).splitlines()[0]) from None
    if target == "auto":
        target = "postgres" if DatabaseSettings().url is not None else "kafka"
    if target == "postgres":
        _apply_to_postgres(file, parsed)
        return
    settings = KafkaSettings()
    version = publish_catalog(parsed, settings.client_config(), prefix=settings.topic_prefix)
    _summary(parsed)
    click.echo(
        f"published {len(parsed.meters)} meters and {len(parsed.subscriptions)} snapshots (version {version}) "
        "straight to Kafka (no system of record: `--to postgres` applies the file to PostgreSQL)"
    )


def _apply_to_postgres(file: Path, parsed: Catalog) -> None:
    """The diff, done: PostgreSQL first (features, add-ons, new plan versions, then each
    subscription in a transaction of its own, with its outbox rows), then the meters to
    catalog.meters and one relay round of the outbox, so the terms in force reach
    entitlements.snapshots at once (a scheduled change is relayed when it takes effect, by
    `metergate subscriptions publish --follow` or the admin service).

    Each item is printed when done; a subscription that fails is one line on stderr naming it and
    the field (`x subscription of acme (acme:pro): variables.seats.limit: ...`), the others are applied, and
    the exit code is 2. A file of 50 subscriptions or more prints its progress on stderr every
    tenth of them."""
    from datetime import UTC, datetime

    from metergate import provisioning
    from metergate.cli.subscriptions import who
    from metergate.db.engine import make_engine
    from metergate.domain.catalog_diff import Action, summary
    from metergate.kafka.producer import make_producer, send
    from metergate.kafka.topics import Topics
    from metergate.settings import DatabaseSettings
    from metergate.snapshot_relay import relay_once

    database = DatabaseSettings()
    kafka = KafkaSettings()
    config = kafka.client_config()  # before anything is written: a missing broker is one line
    engine = make_engine(database.sqlalchemy_url(), database.schema_name)
    now = datetime.now(UTC)
    total = len(parsed.subscriptions)
    step = -(-total // 10) if total >= PROGRESS_FROM else 0
    seen = failed = 0

    def done(item: Any) -> None:
        nonlocal seen, failed
        for line in item.lines():
            click.echo(line, err=item.action is Action.FAILED)
        if not item.subject.startswith("subscription of "):
            return
        seen += 1
        failed += item.action is Action.FAILED
        if step and (seen % step == 0 or seen == total):
            click.echo(f"catalog apply: {seen}/{total} subscriptions ({failed} failed)", err=True)

    try:
        try:
            planned = provisioning.apply_catalog(engine, parsed, who=who(), now=now, on_each=done)
        except InvalidInput as exc:
            raise BadSetup(f"{file}: {str(exc).splitlines()[0]}") from None
        refused = [item for item in planned if item.action is Action.REFUSED]
        if refused:
            for item in planned:
                for line in item.lines():
                    click.echo(line)
            click.echo(summary(planned))
            raise BadSetup(
                f"{file}: {len(refused)} change{'' if len(refused) == 1 else 's'} refused, nothing written: "
                "published plan versions and add-ons are never edited and a feature's kind never changes "
                "(give a new version number or key)"
            )
        producer = make_producer(config)
        topics = Topics(kafka.topic_prefix)
        meter_codec = codec(MeterDefinition)
        send(
            producer,
            topics.meters,
            ((meter.meter.encode(), meter_codec.encode(meter)) for meter in parsed.meters.values()),
        )
        relayed = relay_once(engine, producer, topics, clock=lambda: datetime.now(UTC))
    finally:
        engine.dispose()
    counts = {action: sum(1 for p in planned if p.action is action) for action in Action}
    failures = f", {counts[Action.FAILED]} failed" if counts[Action.FAILED] else ""
    click.echo(
        f"Apply complete: {counts[Action.ADD]} added, {counts[Action.CHANGE]} changed, "
        f"{counts[Action.SAME]} unchanged{failures}; published {len(parsed.meters)} meters and "
        f"{len(relayed)} snapshot{'' if len(relayed) == 1 else 's'}."
    )
    if counts[Action.FAILED]:
        n = counts[Action.FAILED]
        raise BadSetup(
            f"{file}: {n} subscription{'' if n == 1 else 's'} could not be applied (each named above with "
            "its field); everything else is applied"
        )


#: a file with this many subscriptions or more prints its progress while it applies
PROGRESS_FROM = 50


def _summary(parsed: Catalog) -> None:
    versions = sum(len(v) for v in parsed.plans.values())
    count = len(parsed.add_ons)
    add_ons = f"{count} add-on{'' if count == 1 else 's'}, " if count else ""
    click.echo(
        f"{len(parsed.meters)} meters, {len(parsed.features)} features, {add_ons}{len(parsed.plans)} plans "
        f"({versions} versions), {len(parsed.subscriptions)} subscriptions"
    )
