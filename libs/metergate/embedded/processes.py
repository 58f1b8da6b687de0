"""Child processes: the one runner of the embedded stack, the services the demo, the benchmarks and
the tests start, started with a parent-death signal and stopped by their PID.

Each child gets PR_SET_PDEATHSIG, so even a SIGKILLed parent leaves no orphan behind (the signal
fires when the *thread* that started the child ends: start children from a thread that outlives
them, e.g. the main thread); it runs in a process group of its own, so a Ctrl-C in the terminal
reaches the parent only. Output (stdout and stderr) goes to its log file. A clean stop sends the
child's own graceful signal, waits, and kills it only if it does not go; `kill()` is the SIGKILL a
crash test wants.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from metergate.errors import StackError

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout_s):
        return True
    return False


def _die_with_parent(sig: int) -> Callable[[], None]:
    def preexec() -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)
        os.setpgrp()  # own process group: Ctrl-C in the terminal reaches the parent only

    return preexec


@dataclass
class ChildProcess:
    """A process we started, and how to stop it."""

    name: str
    argv: Sequence[str]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    user: str | None = None
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(self.stop_signal),
                user=self.user,
                env=None if self.env is None else dict(self.env),
                cwd=self.cwd,
                close_fds=True,
            )
        except OSError as exc:
            raise StackError(f"{self.name}: cannot start {self.argv[0]}: {exc}") from exc
        finally:
            log.close()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code once the child has ended (negative: the signal that ended it)."""
        return None if self.process is None else self.process.poll()

    def signal(self, sig: int) -> None:
        """Send `sig` to the child while it runs (SIGSTOP/SIGCONT to pause it, SIGUSR1, ...)."""
        if self.running():
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        """The exit code; raises subprocess.TimeoutExpired if it still runs after `timeout_s`."""
        if self.process is None:
            raise StackError(f"{self.name} was never started")
        return self.process.wait(timeout=timeout_s)

    def kill(self, timeout_s: float = 10.0) -> None:
        """SIGKILL, and wait until it is gone."""
        if self.running():
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait(timeout=timeout_s)

    def wait_until(self, ready: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                raise StackError(f"{self.name} exited during start-up; last log lines:\n{self.tail()}")
            if ready():
                return
            time.sleep(0.05)
        raise StackError(f"{self.name} not ready after {timeout_s:.0f} s; last log lines:\n{self.tail()}")

    def stop(self, timeout_s: float = 10.0) -> bool:
        """The graceful signal, then SIGKILL after `timeout_s`; True if it went on the graceful one
        (or had already ended)."""
        if self.process is None or self.process.poll() is not None:
            return True
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait(timeout=5)
            return False

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
