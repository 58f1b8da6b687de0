"""Fault injection for the tests of a commit order: `METERGATE_<SERVICE>_FAULT=STEP@N`.

A service names the steps of its commit order (metering: services/metering/commit.py; rating:
services/rating/consumer.py) and calls `fault.at(step, batch)` at each; with `STEP@N` set, the
process SIGKILLs itself at STEP of its N-th batch (counting from 1) and of every later one it
reaches, which is how the kill tests stop a worker between two durable steps. Unset in production:
`at` is then one comparison.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence

from metergate.errors import ConfigurationError

log = logging.getLogger(__name__)


class Fault:
    def __init__(self, variable: str, steps: Sequence[str], spec: str | None) -> None:
        self.variable = variable
        self.steps = tuple(steps)
        self.step: str | None = None
        self.batch = 0
        if spec:
            step, _, number = spec.partition("@")
            if step not in self.steps or not number.isdigit() or int(number) < 1:
                raise ConfigurationError(
                    f"{variable}: expected STEP@N with STEP one of {', '.join(self.steps)} and N >= 1, "
                    f"got {spec!r}"
                )
            self.step, self.batch = step, int(number)

    @classmethod
    def from_env(cls, variable: str, steps: Sequence[str]) -> Fault:
        return cls(variable, steps, os.environ.get(variable))

    def at(self, step: str, batch: int) -> None:
        """SIGKILL this process if the fault names `step` and `batch` (1-based) has reached it."""
        if self.step == step and batch >= self.batch:
            log.warning(
                "fault injection: %s=%s@%d: SIGKILL in batch %d", self.variable, step, self.batch, batch
            )
            os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["Fault"]
