"""metergate services as child processes (`metergate run NAME`), for the demo, benchmarks and e2e tests.

Each gets the stack's environment, its own metrics port and log file, dies with its parent
(PR_SET_PDEATHSIG) and is stopped by its PID with SIGTERM (SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from metergate.embedded.processes import ChildProcess, free_port, port_open
from metergate.errors import StackError


class ServiceProcess:
    def __init__(self, name: str, environment: Mapping[str, str], log_dir: Path, **extra_env: str) -> None:
        self.name = name
        self.metrics_port = free_port()
        env = {**os.environ, **environment, "METERGATE_METRICS_PORT": str(self.metrics_port), **extra_env}
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.child = ChildProcess(
            name=f"metergate {name}",
            argv=[sys.executable, "-m", "metergate.cli", "run", name],
            log_path=log_dir / f"{name}.log",
            stop_signal=signal.SIGTERM,
            env=env,
        )

    @property
    def pid(self) -> int | None:
        return self.child.pid

    def start(self, timeout_s: float = 60.0) -> None:
        self.child.start()
        self.child.wait_until(lambda: port_open("127.0.0.1", self.metrics_port), timeout_s)

    def kill(self) -> None:
        """SIGKILL: the crash a fault test wants."""
        if self.child.process is not None and self.child.process.poll() is None:
            self.child.process.kill()
            self.child.process.wait(timeout=10)

    def stop(self, timeout_s: float = 20.0) -> None:
        self.child.stop(timeout_s)

    def running(self) -> bool:
        return self.child.running()

    def metrics(self) -> dict[str, float]:
        """Every sample of the service's /metrics as {'name{label="v",...}': value}."""
        return scrape(self.metrics_port)

    def tail(self, lines: int = 30) -> str:
        return self.child.tail(lines)


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def metric_sum(samples: Mapping[str, float], name: str) -> float:
    """Sum of every sample of `name` (all label values)."""
    return sum(value for key, value in samples.items() if key == name or key.startswith(name + "{"))


def wait_for(condition: object, timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(interval_s)
    raise StackError(f"timed out after {timeout_s:.0f} s waiting for {what}")
