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
from metergate.domain.catalog_diff import Action, summary
from metergate.errors import CatalogError

__all__ = ["catalog"]


@catalog.command("plan")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def plan(file: Path) -> None:
    """Print what applying FILE would add, change or refuse in PostgreSQL (nothing is written)."""
    from metergate import provisioning
    from metergate.db.engine import make_engine
    from metergate.settings import DatabaseSettings

    try:
        parsed = load_catalog(file)
    except CatalogError as exc:
        raise BadSetup(str(exc).splitlines()[0]) from None
    settings = DatabaseSettings()
    engine = make_engine(settings.sqlalchemy_url(), settings.schema_name)
    try:
        planned = provisioning.plan_catalog(engine, parsed, now=datetime.now(UTC))
    finally:
        engine.dispose()
    for item in planned:
        for line in item.lines():
            click.echo(line)
    click.echo(summary(planned))
    refused = sum(1 for item in planned if item.action is Action.REFUSED)
    if refused:
        raise BadSetup(
            f"{file}: {refused} change{'' if refused == 1 else 's'} refused: published plan versions are never "
            "edited, nor published add-ons, a feature's kind never changes (give a new version number), and a subscription's "
            "overrides are kept as prices only"
        )
