"""`metergate catalog plan FILE`: what applying FILE to PostgreSQL would do, printed first (as
`terraform plan` does). Rules: `metergate.domain.catalog_diff`.

It adds itself to the `catalog` group of `metergate.cli.catalog` (registered in `cli/main.py`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from metergate.cli.catalog import catalog, load_catalog
from metergate.cli.reporting import BadSetup
from metergate.domain.catalog_diff import Action, Subscribed, diff_catalog, summary
from metergate.errors import CatalogError

__all__ = ["catalog"]


@catalog.command("plan")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def plan(file: Path) -> None:
    """Print what applying FILE would add, change or refuse in PostgreSQL (nothing is written)."""
    from metergate.db import subscription_store as store
    from metergate.db.engine import make_engine
    from metergate.settings import DatabaseSettings

    try:
        parsed = load_catalog(file)
    except CatalogError as exc:
        raise BadSetup(str(exc).splitlines()[0]) from None
    settings = DatabaseSettings()
    engine = make_engine(settings.sqlalchemy_url(), settings.schema_name)
    try:
        with engine.connect() as conn:
            features = store.load_features(conn)
            plans = store.published_terms(conn)
            held = {
                customer: Subscribed(*found)
                for customer, found in store.plans_in_force(conn, datetime.now(UTC)).items()
            }
    finally:
        engine.dispose()
    planned = diff_catalog(parsed, features=features, plans=plans, subscriptions=held)
    for item in planned:
        for line in item.lines():
            click.echo(line)
    click.echo(summary(planned))
    refused = sum(1 for item in planned if item.action is Action.REFUSED)
    if refused:
        raise BadSetup(
            f"{file}: {refused} change{'' if refused == 1 else 's'} refused: published plan versions are never "
            "edited and a feature's kind never changes (give a new version number)"
        )
