"""Run metergate's Alembic migrations inside one PostgreSQL schema."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from metergate.db.engine import check_schema_name, make_engine, normalise_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str, schema: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    config.attributes["schema"] = check_schema_name(schema)
    return config


def upgrade(url: str, schema: str, revision: str = "head") -> None:
    """Create `schema` if needed and migrate it to `revision` (idempotent)."""
    engine = make_engine(url, "public")
    try:
        with engine.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{check_schema_name(schema)}"'))
    finally:
        engine.dispose()
    command.upgrade(alembic_config(url, schema), revision)


def current(url: str, schema: str) -> str | None:
    """The revision `schema` is at, or None when it was never migrated."""
    engine = make_engine(url, schema)
    try:
        with engine.connect() as connection:
            exists = connection.execute(
                text("SELECT to_regclass(:name)"), {"name": f'"{schema}".alembic_version'}
            ).scalar()
            if exists is None:
                return None
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
