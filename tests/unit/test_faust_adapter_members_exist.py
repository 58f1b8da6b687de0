"""Faust's private members behind services/metering/faust_adapter.py still exist with the same shape.

If this fails after a Faust upgrade, re-read Faust's source for the member before changing the pin.
"""

from __future__ import annotations

import inspect

import aiokafka
import faust
import pytest
from faust.transport.drivers import aiokafka as aiokafka_driver

# (owner, member, parameter names after self)
METHODS = [
    (aiokafka_driver.Consumer, "_commit", ["offsets"]),
    (aiokafka_driver.Consumer, "_wait_next_records", ["timeout"]),
    (aiokafka_driver.Consumer, "_to_message", ["tp", "record"]),
    (aiokafka_driver.Consumer, "_new_consumer_thread", []),
    (aiokafka_driver.AIOKafkaConsumerThread, "_create_worker_consumer", ["transport"]),
    (faust.App, "_new_transport", []),
]


@pytest.mark.parametrize(("owner", "member", "parameters"), METHODS, ids=[m for _, m, _ in METHODS])
def test_a_private_method_the_adapter_calls_keeps_its_signature(
    owner: type, member: str, parameters: list[str]
) -> None:
    method = getattr(owner, member, None)
    assert callable(method), f"{owner.__qualname__}.{member} is gone"
    assert list(inspect.signature(method).parameters)[1:] == parameters


def test_the_coroutines_are_still_coroutines() -> None:
    assert inspect.iscoroutinefunction(aiokafka_driver.Consumer._commit)
    assert inspect.iscoroutinefunction(aiokafka_driver.Consumer._wait_next_records)


def test_buffered_partitions_is_still_a_set_attribute_of_faust_consumers() -> None:
    from faust.transport.consumer import Consumer

    assert Consumer.__annotations__.get("_buffered_partitions") is not None
    assert "self._buffered_partitions = set()" in inspect.getsource(Consumer)


def test_aiokafka_still_reads_fetch_max_wait_ms_from_the_private_attribute() -> None:
    source = inspect.getsource(aiokafka.AIOKafkaConsumer)
    assert "self._fetch_max_wait_ms" in source
