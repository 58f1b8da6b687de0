"""Faust transport that delivers each fetched run of records of a partition as ONE stream event.

Why: Faust turns every Kafka record into a Message, an Event, an ack and a `wait_first` task on
the consumer's loop. Measured on the embedded broker (2 cores), that path alone caps consumption at
about 6,500 records/s, below the 10,000 events/s the metering worker must sustain. The metering
agent wants batches anyway, so for the topics named in `batched_topics` this consumer yields one
"batch" `ConsumerMessage` per fetch holding the aiokafka records (offset, key, value, timestamp).
Everything else Faust does is kept: group membership and rebalancing, the fetcher thread, flow
control, and every other topic is delivered record by record as usual.

Values of a batched topic must be read with the `passthrough` codec (`PASSTHROUGH`), which hands
the list to the agent untouched. Faust's private members are reached through `faust_adapter` only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

import faust
from faust.serializers import codecs
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from metergate_services.metering import faust_adapter

if TYPE_CHECKING:
    from metergate_services.metering.membership import MembershipFile

PASSTHROUGH = "metergate-passthrough"


class _Passthrough(codecs.Codec):
    """Returns what it is given: the batch of records built by BatchingConsumer."""

    def _dumps(self, obj: Any) -> bytes:
        return obj  # type: ignore[no-any-return]

    def _loads(self, s: bytes) -> Any:
        return s


codecs.register(PASSTHROUGH, _Passthrough())


class LowLatencyConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust hard-codes aiokafka's fetch_max_wait_ms=1500. The embedded broker holds a fetch for
    that long even when records are there (measured: event-to-limit-event latency ~2 s at 10k/s);
    FETCH_MAX_WAIT_MS bounds it instead."""

    fetch_max_wait_ms: ClassVar[int] = 50
    #: where the group membership is recorded and taken back from (faust_adapter.resume_membership)
    membership: ClassVar[MembershipFile | None] = None

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        faust_adapter.set_fetch_max_wait_ms(consumer, self.fetch_max_wait_ms)
        return consumer

    async def on_start(self) -> None:
        await super().on_start()  # creates and starts the aiokafka consumer; it subscribes later
        if self.membership is not None:
            faust_adapter.resume_membership(
                faust_adapter.worker_consumer(self), self.membership.load(), self.membership.save
            )


class BatchingConsumer(aiokafka_driver.Consumer):
    batched_topics: ClassVar[frozenset[str]] = frozenset()
    consumer_thread: ClassVar[type[LowLatencyConsumerThread]] = LowLatencyConsumerThread

    def _new_consumer_thread(self) -> aiokafka_driver.AIOKafkaConsumerThread:
        return self.consumer_thread(self, loop=self.loop, beacon=self.beacon)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, ConsumerMessage]]:  # type: ignore[override]
        # Same as faust.transport.consumer.Consumer.getmany, except for batched topics (see module doc).
        records, active_partitions = await faust_adapter.wait_next_records(self, timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            try:
                await self.perform_seek()
            except Exception as exc:  # as upstream: a failed seek is retried by the next fetch
                self.log.warning(f"exception performing seek when flow not active {exc}")
            return
        batched = self.batched_topics
        to_message = faust_adapter.message_builder(self)
        runs: dict[str, dict[int, list[Any]]] = {}
        first_tp: dict[str, TP] = {}
        for tp, tp_records in records.items():
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                return
            if not tp_records:
                continue
            if (
                active_partitions is None
                or tp in active_partitions
                or tp in faust_adapter.buffered_partitions(self)
            ):
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                if tp.topic in batched:
                    runs.setdefault(tp.topic, {})[tp.partition] = list(tp_records)
                    first_tp.setdefault(tp.topic, tp)
                else:
                    for record in tp_records:
                        yield tp, to_message(tp, record)
        for topic, by_partition in runs.items():
            yield first_tp[topic], self._batch_message(first_tp[topic], by_partition)

    def _batch_message(self, tp: TP, by_partition: dict[int, list[Any]]) -> ConsumerMessage:
        last = by_partition[tp.partition][-1]
        return ConsumerMessage(
            last.topic,
            last.partition,
            last.offset,
            (last.timestamp or 0) / 1000.0,
            last.timestamp_type,
            [],
            None,
            by_partition,  # type: ignore[arg-type]  # the batch, read with the passthrough codec
            None,
            0,
            0,
            tp,
            generation_id=self.app.consumer_generation_id,
        )


def batching_app_class(
    batched_topics: frozenset[str], membership: MembershipFile | None = None
) -> type[faust.App]:
    """A faust.App whose Kafka transport batches the given topics (and, given `membership`, records
    its group membership there and takes it back at start: faust_adapter.resume_membership)."""

    thread_class = type("MeteringConsumerThread", (LowLatencyConsumerThread,), {"membership": membership})
    consumer_class = type(
        "MeteringConsumer",
        (BatchingConsumer,),
        {"batched_topics": batched_topics, "consumer_thread": thread_class},
    )
    transport_class = type("MeteringTransport", (aiokafka_driver.Transport,), {"Consumer": consumer_class})

    class MeteringApp(faust.App):
        def _new_transport(self) -> Any:
            return transport_class(self.conf.broker_consumer, self)

    return MeteringApp
