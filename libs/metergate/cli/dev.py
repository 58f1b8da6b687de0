"""`metergate dev up`: the embedded stack in the foreground; Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import select
import signal
from pathlib import Path
from types import FrameType

import click

from metergate.settings import DatabaseSettings, KafkaSettings, StackSettings


@click.group()
def dev() -> None:
    """The embedded development stack (broker + PostgreSQL, no Docker)."""


def write_env_file(path: Path, environment: dict[str, str]) -> None:
    """Write `export NAME=value` lines, readable by the owner only (the database URL may hold a password)."""
    text = "".join(f"export {name}={value}\n" for name, value in environment.items())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an older file keeps its mode through O_CREAT: set it
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def shown(name: str, value: str) -> str:
    """A setting as it may be printed: a database URL without its password."""
    if name != "METERGATE_DATABASE_URL" or not value:
        return value
    from sqlalchemy.engine import make_url

    return make_url(value).render_as_string(hide_password=True)


def libpq_url(sqlalchemy_url: str) -> str:
    """The same database as a libpq URL (what psql takes): postgresql://, no driver name."""
    scheme, sep, rest = sqlalchemy_url.partition("://")
    return f"postgresql://{rest}" if sep and scheme.startswith("postgres") else sqlalchemy_url


class _Stop:
    """Stop requests from SIGINT/SIGTERM that take no lock the main thread may hold.

    The handler only sets a flag; `signal.set_wakeup_fd` writes a byte to a pipe the main thread
    waits on with select(), so the wait ends at once. (A threading.Event set from a handler can
    deadlock: the handler runs on the main thread, possibly while it holds the Event's lock.)
    """

    def __init__(self) -> None:
        self.requested = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def __enter__(self) -> _Stop:
        self._previous_fd = signal.set_wakeup_fd(self._write)
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.requested = True

    def wait(self) -> None:
        while not self.requested:
            select.select([self._read], [], [], 1.0)
            try:
                os.read(self._read, 512)
            except BlockingIOError:
                pass

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._read)
        os.close(self._write)


@dev.command("up")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Default: METERGATE_DATA_DIR or .metergate",
)
@click.option(
    "--partitions",
    type=click.IntRange(1, 10_000),
    default=None,
    help="Partitions of the usage topics (default 4).",
)
def up(data_dir: Path | None, partitions: int | None) -> None:
    """Start the embedded broker and PostgreSQL, create topics, migrate; stop all on Ctrl-C/SIGTERM."""
    from metergate.embedded.stack import EmbeddedStack

    data_dir = data_dir or StackSettings().data_dir
    kafka = KafkaSettings()
    if partitions is not None:
        kafka = kafka.model_copy(update={"partitions": partitions})
    with _Stop() as stop, EmbeddedStack(data_dir, kafka=kafka, database=DatabaseSettings()) as info:
        env_file = Path(data_dir) / "stack.env"
        write_env_file(env_file, {**info.environment(), "METERGATE_KAFKA_TOPIC_PREFIX": kafka.topic_prefix})
        click.echo(f"metergate dev stack up in {info.startup_s:.1f} s (data in {Path(data_dir).resolve()})")
        for name, value in info.environment().items():
            click.echo(f"  {name}={shown(name, value)}")
        click.echo(f"  psql: {shown('METERGATE_DATABASE_URL', libpq_url(info.database_url))}")
        click.echo(f"  broker pid {info.broker_pid}, postgres pid {info.postgres_pid}")
        click.echo(f"Use it from another shell: source {env_file}  (commands find it there by themselves)")
        click.echo("Ctrl-C stops the stack.", nl=True)
        try:
            stop.wait()
        finally:
            env_file.unlink(missing_ok=True)  # commands must not find a stack that is gone
        click.echo("stopping...")
    click.echo("stopped: no process left behind")
