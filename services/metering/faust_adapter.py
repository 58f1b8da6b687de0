"""The one place metering touches Faust's (and aiokafka's) private members.

Faust has no public API for what the metering worker needs, so these few private members are used,
here only, against the pinned faust-streaming version (pyproject.toml); the rest of the service calls
the functions below. `tests/unit/test_faust_adapter_members_exist.py` fails if a member disappears or
changes signature, which is the signal to re-read Faust's source before upgrading.

| member | of | why |
| --- | --- | --- |
| `_commit(offsets)` | faust Consumer | commit exactly the offsets the worker made durable (app.py), not Faust's acked ones |
| `_wait_next_records(timeout)` | faust Consumer | the fetch step of `getmany`, re-implemented to batch (transport.py) |
| `_to_message(tp, record)` | faust Consumer | the per-record message of non-batched topics, as upstream |
| `_buffered_partitions` | faust Consumer | the partitions `getmany` must still deliver, as upstream |
| `_fetch_max_wait_ms` | aiokafka AIOKafkaConsumer | Faust hard-codes 1500 ms; the worker bounds it (transport.py) |
| `_consumer` | faust AIOKafkaConsumerThread | the aiokafka consumer, to reach its group coordinator |
| `_coordinator`, its `_do_rejoin_group(subscription)`, `_on_join_complete(generation, member_id, protocol, member_assignment_bytes)`, `_send_req(request)`, `_rejoin_needed_fut`, `_group_subscription`, `member_id`, `generation`, `reset_generation()` | aiokafka GroupCoordinator | resume the group membership a SIGKILLed predecessor left (below) |
| `_update_channels()` | faust TableManager | start the table manager without its fixed 1 s sleep (the app has no tables) |

The overridden hooks `_create_worker_consumer`, `_new_consumer_thread`, `App._new_transport` and
`TableManager.on_start` are checked by the same test.

RESUMING A GROUP MEMBERSHIP (`resume_membership`)
-------------------------------------------------
A restarted worker would join its group as a new member: the group waits for its SIGKILLed
predecessor's session to expire, and tansu holds every JoinGroup for half the group's session
timeout. Instead, every assignment the worker receives is recorded in its data dir (member id,
generation, protocol, the assignment bytes), and the next process on that data dir (the data dir is
owned through an flock: its previous owner is dead) first asks the coordinator whether that
membership is still current, with a Heartbeat under the recorded member id and generation. NoError
means the group is still at that generation and still counts the member in it, so the recorded
assignment is this member's alone, as it was its predecessor's: the worker takes it back at once
(no JoinGroup, no rebalance for anyone). Any error and the worker joins as usual: under the recorded
member id when the broker still knows it (a rebalance is under way, or the generation moved on),
which replaces the dead member instead of waiting for it to expire; as a new member otherwise. Only
the member id this data dir recorded is ever used, never another worker's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.coordinator.protocol import ConsumerProtocol
from aiokafka.protocol.commit import OffsetCommitRequest
from aiokafka.protocol.group import HeartbeatRequest
from faust.tables import TableManager
from faust.types import TP
from faust.types.tuples import ConsumerMessage

log = logging.getLogger(__name__)


async def commit_offsets(consumer: Any, offsets: Mapping[TP, int]) -> bool:
    """Commit `offsets` (next offset to read, per partition) to the group, bypassing Faust's acks."""
    return bool(await consumer._commit(offsets))


async def wait_next_records(consumer: Any, timeout: float) -> tuple[Any, Any]:
    """(records by partition or None, active partitions or None): one fetch, as Faust's getmany does."""
    return await consumer._wait_next_records(timeout)  # type: ignore[no-any-return]


def message_builder(consumer: Any) -> Callable[[TP, Any], ConsumerMessage]:
    """Faust's own record -> ConsumerMessage conversion of `consumer`."""
    return consumer._to_message  # type: ignore[no-any-return]


def buffered_partitions(consumer: Any) -> set[TP]:
    """Partitions whose records Faust still delivers although they are not active (as upstream)."""
    return consumer._buffered_partitions  # type: ignore[no-any-return]


def set_fetch_max_wait_ms(aiokafka_consumer: Any, milliseconds: int) -> None:
    """Bound how long the broker may hold a fetch (Faust passes aiokafka a fixed 1500 ms)."""
    aiokafka_consumer._fetch_max_wait_ms = milliseconds


def worker_consumer(consumer_thread: Any) -> Any:
    """The aiokafka consumer of a Faust consumer thread (started)."""
    return consumer_thread._consumer


class TablelessTableManager(TableManager):
    """Faust's table manager without its fixed 1 s sleep at start (there for tables declared late;
    the metering app declares none): the group join starts 1 s sooner."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


@dataclass(frozen=True)
class Membership:
    """One assignment of a group member, as the coordinator gave it."""

    group_id: str
    member_id: str
    generation: int
    protocol: str
    assignment: bytes
    #: the member was the group's leader (it watches the topics' metadata for the group)
    leader: bool


def resume_membership(
    aiokafka_consumer: Any,
    recorded: Membership | None,
    record: Callable[[Membership], None],
) -> None:
    """Record every assignment of `aiokafka_consumer` (`record`, before the rebalance callbacks
    run), and make its first join take back `recorded` when the coordinator says it is still
    current (see the module docstring). Call after the consumer started, before it subscribes."""
    coordinator = aiokafka_consumer._coordinator
    join = coordinator._do_rejoin_group
    complete = coordinator._on_join_complete
    pending = [recorded] if recorded is not None and recorded.group_id == coordinator.group_id else []

    async def on_join_complete(generation: int, member_id: str, protocol: str, assignment: bytes) -> None:
        leader = coordinator._group_subscription is not None  # set by the leader's assignment step
        record(Membership(coordinator.group_id, member_id, generation, protocol, bytes(assignment), leader))
        await complete(generation, member_id, protocol, assignment)

    async def do_rejoin_group(subscription: Any) -> bool:
        if pending:
            membership = pending.pop()
            try:
                if await _take_back(coordinator, membership, subscription):
                    return True
            except Exception:  # never let taking back stop the group coordination: join instead
                log.exception("taking back group membership %s failed: joining as a new member", membership)
                coordinator.reset_generation()
        return bool(await join(subscription))

    coordinator._on_join_complete = on_join_complete
    coordinator._do_rejoin_group = do_rejoin_group


async def _take_back(coordinator: Any, membership: Membership, subscription: Any) -> bool:
    try:
        topics = {tp.topic for tp in ConsumerProtocol.ASSIGNMENT.decode(membership.assignment).partitions()}
    except Exception as exc:  # a record we cannot read: join as a new member
        log.warning("recorded group membership unreadable (%s): joining as a new member", exc)
        return False
    if not topics <= set(subscription.topics):
        return False
    coordinator._rejoin_needed_fut = asyncio.get_running_loop().create_future()
    coordinator.member_id, coordinator.generation = membership.member_id, membership.generation
    try:
        response = await coordinator._send_req(
            HeartbeatRequest(coordinator.group_id, membership.generation, membership.member_id)
        )
        error: Any = kafka_errors.for_code(response.error_code)
    except kafka_errors.KafkaError as exc:
        error = type(exc)
    if error is kafka_errors.NoError and subscription.active:
        log.info(
            "took back group membership %s (generation %d) of this data dir's previous worker",
            membership.member_id,
            membership.generation,
        )
        if membership.leader:
            coordinator._group_subscription = set(subscription.topics)
        await coordinator._on_join_complete(
            membership.generation, membership.member_id, membership.protocol, membership.assignment
        )
        return True
    if error in (kafka_errors.RebalanceInProgressError, kafka_errors.IllegalGenerationError):
        # the broker knows the member: join under its id, which replaces the dead one at once
        coordinator.generation = OffsetCommitRequest.DEFAULT_GENERATION_ID
        log.info(
            "group membership %s: %s, rejoining under that member id", membership.member_id, error.__name__
        )
    else:
        coordinator.reset_generation()
        log.info(
            "group membership %s not current (%s): joining as a new member",
            membership.member_id,
            error.__name__,
        )
    return False
