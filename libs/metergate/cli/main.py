"""`metergate`: one click group; each area registers its commands from its own module."""

from __future__ import annotations

import importlib
import logging
import os
import shlex
from pathlib import Path
from typing import Any

import click

from metergate.cli.reporting import BadSetup

#: commands that start their own services: a running stack's stack.env must not redirect them
STARTS_ITS_OWN = {"dev", "demo"}
POINTERS = ("METERGATE_KAFKA_BOOTSTRAP", "METERGATE_DATABASE_URL")


def use_running_stack(environ: Any = os.environ) -> Path | None:
    """When the environment names no broker and no database, adopt a running `metergate dev up`.

    Reads `<METERGATE_DATA_DIR or .metergate>/stack.env` (written by `dev up`, removed when it
    stops) and sets the variables it exports that the environment does not set. Returns its path.
    """
    if any(environ.get(name) for name in POINTERS):
        return None
    path = Path(environ.get("METERGATE_DATA_DIR") or ".metergate") / "stack.env"
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            environ.setdefault(name, value)
    return path


def one_line(exc: BaseException) -> BadSetup | None:
    """The one-line message of an error a user can fix (settings, services down, bad input)."""
    from metergate.errors import MetergateError

    if isinstance(exc, MetergateError):
        return BadSetup(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    try:
        from sqlalchemy import exc as sa
    except ImportError:  # pragma: no cover - a dependency
        sa = None  # type: ignore[assignment]
    if sa is not None and isinstance(exc, sa.OperationalError):
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc).splitlines()[0]
        return BadSetup(
            f"PostgreSQL unreachable ({detail}): is it running? Check METERGATE_DATABASE_URL "
            "or start `metergate dev up`"
        )
    if sa is not None and isinstance(exc, sa.ProgrammingError):
        code = getattr(exc.orig, "sqlstate", None)
        if code in ("42P01", "3F000"):  # undefined table, invalid schema name
            schema = os.environ.get("METERGATE_DATABASE_SCHEMA", "metergate")
            return BadSetup(
                f"METERGATE_DATABASE_SCHEMA={schema}: metergate's tables are not in schema {schema!r} "
                "(run `metergate db upgrade`, or set it to the schema the migrations created, default metergate)"
            )
    try:
        from confluent_kafka import KafkaException
    except ImportError:  # pragma: no cover - a dependency
        return None
    if isinstance(exc, KafkaException):
        return BadSetup(
            f"Kafka: {exc.args[0] if exc.args else exc}: check METERGATE_KAFKA_BOOTSTRAP "
            "or start `metergate dev up`"
        )
    return None


class Main(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # one line (click prints the usage and a hint around it)
            path = (exc.ctx or ctx).command_path.split()[1:]  # the program's own name may differ
            where = " ".join(["metergate", *path])
            raise BadSetup(f"{exc.format_message()} (`{where} --help` lists what it takes)") from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            line = one_line(exc)
            if line is None:
                raise
            raise line from None


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
    ("metergate.cli.keys", "keys"),
    ("metergate.cli.subscriptions", "customers"),
    ("metergate.cli.subscriptions", "subscriptions"),
    ("metergate.cli.catalog_plan", "catalog"),  # the catalog group again, with `catalog plan` added
)


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """metergate: usage metering and entitlement enforcement on Kafka + PostgreSQL.

    With neither METERGATE_KAFKA_BOOTSTRAP nor METERGATE_DATABASE_URL set, commands use the stack
    of a running `metergate dev up` (its .metergate/stack.env).
    """
    if ctx.invoked_subcommand not in STARTS_ITS_OWN:
        use_running_stack()
    # Services configure their own logging (`metergate run`); -v sets it for any command.
    if not verbose:  # nothing of ours on stderr but the one-line errors (no logging "last resort")
        logging.getLogger("metergate").addHandler(logging.NullHandler())
    if verbose:
        level = logging.INFO if verbose == 1 else logging.DEBUG
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _module, _attribute in COMMANDS:
    _command = getattr(importlib.import_module(_module), _attribute)  # a missing command fails loudly
    main.add_command(_command)


if __name__ == "__main__":
    main()
