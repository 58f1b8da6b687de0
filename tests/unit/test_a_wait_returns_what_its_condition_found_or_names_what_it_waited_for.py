"""The tests' one wait returns the condition's first truthy value, and on timeout fails naming what
it waited for and the last value it saw."""

from __future__ import annotations

import pytest

from metergate.testing.waiting import wait_until

pytestmark = pytest.mark.unit


def test_it_returns_the_first_truthy_value():
    answers = iter([None, {}, 0, {"usage": "3"}, {"usage": "4"}])
    calls = []

    def condition():
        calls.append(1)
        return next(answers)

    assert wait_until(condition, "usage reported", every_s=0) == {"usage": "3"}
    assert len(calls) == 4


def test_a_condition_that_holds_at_once_is_called_once():
    calls = []

    def condition():
        calls.append(1)
        return True

    assert wait_until(condition, "nothing", timeout_s=0) is True
    assert len(calls) == 1


def test_a_timeout_names_what_was_awaited_and_the_last_value_seen():
    with pytest.raises(AssertionError) as failure:
        wait_until(lambda: [], "the worker to count", timeout_s=0.01, every_s=0.001)
    assert str(failure.value) == "timed out after 0.01 s waiting for the worker to count (last seen: [])"


def test_details_are_added_to_the_failure_and_asked_for_only_then():
    asked = []

    def details():
        asked.append(1)
        return "last lines of the log"

    assert wait_until(lambda: "ok", "a value", details=details) == "ok"
    assert asked == []
    with pytest.raises(AssertionError) as failure:
        wait_until(lambda: False, "never", timeout_s=0, details=details)
    assert (
        str(failure.value)
        == "timed out after 0 s waiting for never (last seen: False)\nlast lines of the log"
    )
    assert asked == [1]


def test_an_exception_of_the_condition_fails_at_once():
    def condition():
        raise RuntimeError("the worker exited with 1")

    with pytest.raises(RuntimeError, match="the worker exited with 1"):
        wait_until(condition, "the worker to count", timeout_s=3600)
