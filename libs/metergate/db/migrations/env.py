"""Alembic environment: migrations run inside the schema given by `migrate.upgrade(url, schema)`.

Tables in revisions are unqualified; the search_path puts the target schema first, and the
version table lives in that schema too, so several metergate schemas can share one database
(tests use one per test).
"""

from __future__ import annotations

from alembic import context

from metergate.db.engine import make_engine

config = context.config
schema = config.attributes.get("schema", "metergate")
configured_url = config.get_main_option("sqlalchemy.url")
if configured_url is None:
    raise SystemExit("metergate migrations need sqlalchemy.url (run them through metergate.db.migrate.upgrade)")
url: str = configured_url


def run_migrations_online() -> None:
    engine = make_engine(url, schema)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection, version_table_schema=schema, transaction_per_migration=True
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("metergate migrations run online only (metergate.db.migrate.upgrade)")
run_migrations_online()
