"""`metergate db`: database migrations (Alembic) on the configured PostgreSQL."""

from __future__ import annotations

import click

from metergate.settings import DatabaseSettings


@click.group()
def db() -> None:
    """metergate's PostgreSQL schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def upgrade(revision: str) -> None:
    """Migrate METERGATE_DATABASE_SCHEMA (default metergate) to REVISION."""
    from alembic.util import CommandError

    from metergate.cli.reporting import BadSetup
    from metergate.db.migrate import current
    from metergate.db.migrate import upgrade as run_upgrade

    settings = DatabaseSettings()
    url = settings.sqlalchemy_url()
    try:
        run_upgrade(url, settings.schema_name, revision)
    except CommandError as exc:
        raise BadSetup(
            f"--revision: {str(exc).splitlines()[0]} (expected head or a revision of metergate's migrations "
            "such as 0004_subscriptions)"
        ) from None
    click.echo(f"schema {settings.schema_name} at revision {current(url, settings.schema_name)}")
