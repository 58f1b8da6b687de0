"""`metergate demo`: the main job end to end on the embedded stack, with a report."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from metergate.settings import StackSettings


@click.command("demo")
@click.option(
    "--keep-running", is_flag=True, help="Leave the stack and services up after the report (Ctrl-C stops)."
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Default: <METERGATE_DATA_DIR>/demo (wiped first)",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def demo(keep_running: bool, data_dir: Path | None, no_progress: bool) -> None:
    """Start the embedded stack and every service, apply a sample catalog, stream a realistic usage
    mix (duplicates, a late event, malformed records, soft and hard limits, overage, credits), wait
    until everything caught up and print a report checked against an independent count."""
    from metergate.demo.run import run_demo

    directory = data_dir or StackSettings().data_dir / "demo"
    sys.exit(run_demo(directory, keep_running=keep_running, progress=not no_progress))
