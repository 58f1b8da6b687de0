"""SQLAlchemy engines for metergate: every connection works inside one PostgreSQL schema."""

from __future__ import annotations

import re

from sqlalchemy import Engine, create_engine, event

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_schema_name(schema: str) -> str:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(
            f"database schema: expected a lowercase identifier ([a-z_][a-z0-9_]*), got {schema!r}"
        )
    return schema


def normalise_url(url: str) -> str:
    """Accept postgres:// and postgresql:// URLs and use the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, schema: str, **kwargs: object) -> Engine:
    """An engine whose connections use `schema` first on the search_path (tables are unqualified)."""
    check_schema_name(schema)
    engine = create_engine(normalise_url(url), pool_pre_ping=True, **kwargs)  # type: ignore[arg-type]

    @event.listens_for(engine, "connect")
    def _set_search_path(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f'SET search_path TO "{schema}", public')
        dbapi_connection.autocommit = autocommit

    return engine
