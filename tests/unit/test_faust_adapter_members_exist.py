"""Faust's private members behind services/metering/faust_adapter.py still exist with the same shape.

If this fails after a Faust upgrade, re-read Faust's source for the member before changing the pin.
"""

from __future__ import annotations

import inspect

import aiokafka
import faust
import pytest
from aiokafka.consumer.group_coordinator import GroupCoordinator
from faust.tables import TableManager
from faust.transport.drivers import aiokafka as aiokafka_driver

# (owner, member, parameter names after self)
METHODS = [
    (aiokafka_driver.Consumer, "_commit", ["offsets"]),
    (aiokafka_driver.Consumer, "_wait_next_records", ["timeout"]),
    (aiokafka_driver.Consumer, "_to_message", ["tp", "record"]),
    (aiokafka_driver.Consumer, "_new_consumer_thread", []),
    (aiokafka_driver.AIOKafkaConsumerThread, "_create_worker_consumer", ["transport"]),
    (faust.App, "_new_transport", []),
    (TableManager, "_update_channels", []),
    (TableManager, "on_start", []),
    (aiokafka_driver.AIOKafkaConsumerThread, "on_start", []),
    (GroupCoordinator, "_do_rejoin_group", ["subscription"]),
    (
        GroupCoordinator,
        "_on_join_complete",
        ["generation", "member_id", "protocol", "member_assignment_bytes"],
    ),
    (GroupCoordinator, "_send_req", ["request"]),
    (GroupCoordinator, "reset_generation", []),
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


def test_the_table_manager_still_starts_as_the_tableless_one_does() -> None:
    """faust_adapter.TablelessTableManager.on_start is Faust's without the sleep: same calls."""
    source = inspect.getsource(TableManager.on_start)
    assert "await self.sleep(1.0)" in source
    assert "await self._update_channels()" in source
    assert "await self.recovery.start()" in source


def test_the_consumer_thread_still_keeps_its_aiokafka_consumer_in_consumer() -> None:
    assert "self._consumer = self._create_consumer(" in inspect.getsource(
        aiokafka_driver.AIOKafkaConsumerThread
    )


def test_the_group_coordinator_still_joins_and_completes_as_resume_membership_expects() -> None:
    """resume_membership wraps `_do_rejoin_group` (which calls `self._on_join_complete` with the
    coordinator's generation and member id) and sets the attributes a join sets."""
    rejoin = inspect.getsource(GroupCoordinator._do_rejoin_group)
    assert "await self._on_join_complete(" in rejoin
    assert "self.generation, self.member_id, protocol, member_assignment_bytes" in rejoin
    source = inspect.getsource(GroupCoordinator)
    for attribute in (
        "self._rejoin_needed_fut = create_future()",
        "self._group_subscription = None",
        "self.member_id = JoinGroupRequest.UNKNOWN_MEMBER_ID",
        "self.generation = OffsetCommitRequest.DEFAULT_GENERATION_ID",
    ):
        assert attribute in source, attribute
    ensure = inspect.getsource(GroupCoordinator.ensure_active_group)
    assert "success = await self._do_rejoin_group(subscription)" in ensure
    assert "self._start_heartbeat_task()" in ensure


def test_aiokafka_consumers_still_keep_their_group_coordinator_in_coordinator() -> None:
    assert "self._coordinator = GroupCoordinator(" in inspect.getsource(aiokafka.AIOKafkaConsumer)
