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

The overridden hooks `_create_worker_consumer`, `_new_consumer_thread` and `App._new_transport` are
checked by the same test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from faust.types import TP
from faust.types.tuples import ConsumerMessage


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
