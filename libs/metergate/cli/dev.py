"""`metergate dev up`: the embedded stack in the foreground; Ctrl-C stops everything it started."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import click

from metergate.settings import DatabaseSettings, KafkaSettings, StackSettings


@click.group()
def dev() -> None:
    """The embedded development stack (broker + PostgreSQL, no Docker)."""


def write_env_file(path: Path, environment: dict[str, str]) -> None:
    path.write_text("".join(f"export {name}={value}\n" for name, value in environment.items()))


@dev.command("up")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Default: METERGATE_DATA_DIR or .metergate",
)
@click.option("--partitions", type=int, default=None, help="Partitions of the usage topics (default 4).")
def up(data_dir: Path | None, partitions: int | None) -> None:
    """Start the embedded broker and PostgreSQL, create topics, migrate; stop all on Ctrl-C/SIGTERM."""
    from metergate.embedded.stack import EmbeddedStack

    data_dir = data_dir or StackSettings().data_dir
    kafka = KafkaSettings()
    if partitions is not None:
        kafka = kafka.model_copy(update={"partitions": partitions})
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with EmbeddedStack(data_dir, kafka=kafka, database=DatabaseSettings()) as info:
            env_file = Path(data_dir) / "stack.env"
            write_env_file(
                env_file, {**info.environment(), "METERGATE_KAFKA_TOPIC_PREFIX": kafka.topic_prefix}
            )
            click.echo(
                f"metergate dev stack up in {info.startup_s:.1f} s (data in {Path(data_dir).resolve()})"
            )
            for name, value in info.environment().items():
                click.echo(f"  {name}={value}")
            click.echo(f"  broker pid {info.broker_pid}, postgres pid {info.postgres_pid}")
            click.echo(f"Use it from another shell: source {env_file}")
            click.echo("Ctrl-C stops the stack.", nl=True)
            stop.wait()
            click.echo("stopping...")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("stopped: no process left behind")
