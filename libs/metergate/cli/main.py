"""`metergate`: one click group; each area registers its commands from its own module."""

from __future__ import annotations

import importlib
import logging

import click

#: module -> attribute holding a click command or group; each module owns its commands
COMMANDS: tuple[tuple[str, str], ...] = (
    ("metergate.cli.dev", "dev"),
    ("metergate.cli.topics", "topics"),
    ("metergate.cli.db", "db"),
    ("metergate.cli.emit", "emit"),
    ("metergate.cli.catalog", "catalog"),
    ("metergate.cli.credits", "credits"),
    ("metergate.cli.finance", "finance"),
    ("metergate.cli.services", "run"),
    ("metergate.cli.demo", "demo"),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """metergate: usage metering and entitlement enforcement on Kafka + PostgreSQL."""
    # Services configure their own logging (`metergate run`); -v sets it for any command.
    if verbose:
        level = logging.INFO if verbose == 1 else logging.DEBUG
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _module, _attribute in COMMANDS:
    _command = getattr(importlib.import_module(_module), _attribute)  # a missing command fails loudly
    main.add_command(_command)


if __name__ == "__main__":
    main()
