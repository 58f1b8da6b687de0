"""The one wait of the test suite: poll a condition until it holds, or fail naming what was awaited.

`wait_until(condition, what)` calls `condition` every `every_s` seconds until it returns a truthy
value, and returns that value (a decision, a response body, or just True). Once `timeout_s` has
passed it makes one last call, then raises AssertionError naming `what`, the timeout, the last value
seen and, when given, `details()` (a log tail, say: called only then, so it shows the end).

An exception the condition raises is not caught: a condition raises to fail at once (the process
under test exited) rather than wait out the timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None],
    what: str,
    *,
    timeout_s: float = 30.0,
    every_s: float = 0.1,
    details: Callable[[], str] | None = None,
) -> T:
    """Until `condition()` is truthy; its value. AssertionError after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(every_s, left))  # the poll interval, the only sleep of a wait
    message = f"timed out after {timeout_s} s waiting for {what} (last seen: {value!r})"
    raise AssertionError(message if details is None else f"{message}\n{details()}")
