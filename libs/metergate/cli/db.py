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
    from metergate.db.migrate import current
    from metergate.db.migrate import upgrade as run_upgrade

    settings = DatabaseSettings()
    url = settings.sqlalchemy_url()
    run_upgrade(url, settings.schema_name, revision)
    click.echo(f"schema {settings.schema_name} at revision {current(url, settings.schema_name)}")
