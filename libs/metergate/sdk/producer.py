"""UsageProducer: validates every usage event, then sends it idempotently to `usage.events`.

An invalid event is never sent: `record` raises `InvalidEvent` naming the field and the reason,
with the metering worker's own rules (`metergate.domain.usage.check_ids`: no control or invisible
characters, at most 256 characters). Every event needs its `event_id`, the idempotency key: the SDK
never invents one, because a retry with a fresh random id would count twice.

Kafka key = customer_id, partitioned with murmur2 (librdkafka `partitioner=murmur2_random`), what
Java, Go and Node clients do by default, so one customer's events share a partition whichever
client sent them (`metergate.kafka.partitioner.partition_for` computes it). Delivery failures are
never swallowed: they raise `DeliveryError` from `flush()` (and so from `close()` and the `with`
exit).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any

from confluent_kafka import Producer

from metergate.domain.records import UsageEvent, now_utc
from metergate.domain.usage import check_ids
from metergate.errors import InvalidEvent
from metergate.kafka.partitioner import LIBRDKAFKA_PARTITIONER
from metergate.kafka.producer import DeliveryTracker, flush, make_producer, produce
from metergate.settings import KafkaSettings
from metergate.wire.codec import codec


@dataclass
class BatchResult:
    """What `record_many` did: how many were sent, and each rejected event's index and reason."""

    sent: int = 0
    rejected: list[tuple[int, InvalidEvent]] = field(default_factory=list)

    def reasons(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, error in self.rejected:
            counts[error.reason] = counts.get(error.reason, 0) + 1
        return counts


#: what every producer of usage.events sets on top of `make_producer`'s defaults
USAGE_PRODUCER_CONFIG: dict[str, Any] = {"partitioner": LIBRDKAFKA_PARTITIONER}


def _check_ids(fields: Mapping[str, Any]) -> None:
    rejection = check_ids(fields)
    if rejection is not None:
        raise InvalidEvent(rejection.message, reason=rejection.reason, field=rejection.field)


def validate(event: UsageEvent) -> UsageEvent:
    """`event`, if its ids pass the metering worker's rules; else InvalidEvent naming the field."""
    _check_ids(vars(event))
    return event


def parse_event(data: Mapping[str, Any]) -> UsageEvent:
    """A UsageEvent from untrusted fields, validated as the metering worker will (InvalidEvent):
    the ids first, with the worker's messages, then the rest of the model."""
    _check_ids(data)
    return UsageEvent.parse(dict(data))


def build_event(
    *,
    customer_id: str | None,
    meter: str | None,
    quantity: Decimal | int | str | None,
    event_id: str | None,
    timestamp: datetime | None = None,
    subject_id: str | None = None,
    properties: Mapping[str, str] | None = None,
    source: str | None = None,
) -> UsageEvent:
    """A validated UsageEvent from loose fields (now when no timestamp is given); raises
    InvalidEvent naming the field. `event_id` is required: pass a stable one (the request id, the
    job id and row number, ...) so that a retry counts once."""
    if not event_id:
        raise InvalidEvent(
            "event_id: required field is missing or empty (pass a stable idempotency key, "
            "e.g. the request id, so a retry counts once)",
            reason="missing_field",
            field="event_id",
        )
    return parse_event(
        {
            "event_id": event_id,
            "customer_id": customer_id,
            "subject_id": subject_id,
            "meter": meter,
            "quantity": quantity,
            "timestamp": timestamp or now_utc(),
            "properties": dict(properties or {}),
            "source": source,
        }
    )


class UsageProducer:
    def __init__(
        self,
        client_config: Mapping[str, Any],
        topic: str,
        *,
        source: str | None = None,
        producer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.source = source
        self._codec = codec(UsageEvent)
        self._tracker = DeliveryTracker()
        self._producer: Producer | None = make_producer(
            client_config, **{**USAGE_PRODUCER_CONFIG, **dict(producer_overrides or {})}
        )

    @classmethod
    def from_env(cls, *, source: str | None = None) -> UsageProducer:
        """Connect with METERGATE_KAFKA_* settings (bootstrap, topic prefix, security)."""
        kafka = KafkaSettings()
        return cls(kafka.client_config(), kafka.topics.events, source=source)

    # -- sending -------------------------------------------------------------------------------------
    def record(
        self,
        *,
        customer_id: str,
        meter: str,
        quantity: Decimal | int | str,
        event_id: str,
        timestamp: datetime | None = None,
        subject_id: str | None = None,
        properties: Mapping[str, str] | None = None,
        source: str | None = None,
    ) -> UsageEvent:
        """Validate and send one event. `event_id` is required and must be stable (e.g. the request
        id) so a retry of yours counts once; an empty one raises InvalidEvent."""
        event = build_event(
            customer_id=customer_id,
            meter=meter,
            quantity=quantity,
            event_id=event_id,
            timestamp=timestamp,
            subject_id=subject_id,
            properties=properties,
            source=source or self.source,
        )
        self.send(event)
        return event

    def send(self, event: UsageEvent) -> None:
        """Send a UsageEvent (its ids are checked again: InvalidEvent, nothing sent)."""
        validate(event)
        producer = self._open()
        produce(producer, self.topic, event.customer_id.encode(), self._codec.encode(event), self._tracker)
        producer.poll(0)

    def record_many(
        self, events: Iterable[UsageEvent | Mapping[str, Any]], *, skip_invalid: bool = False
    ) -> BatchResult:
        """Validate and send many events (dicts or UsageEvent). By default the first invalid event
        raises InvalidEvent (events before it are sent); with skip_invalid=True invalid ones are
        reported in the result and the rest are sent."""
        result = BatchResult()
        for index, item in enumerate(events):
            try:
                event = (
                    validate(item) if isinstance(item, UsageEvent) else parse_event(self._with_source(item))
                )
            except InvalidEvent as error:
                if not skip_invalid:
                    raise InvalidEvent(
                        f"events[{index}].{error.message}", reason=error.reason, field=error.field
                    ) from None
                result.rejected.append((index, error))
                continue
            self.send(event)
            result.sent += 1
        return result

    def _with_source(self, item: Mapping[str, Any]) -> dict[str, Any]:
        data = dict(item)
        if self.source and not data.get("source"):
            data["source"] = self.source
        return data

    # -- lifecycle -----------------------------------------------------------------------------------
    @property
    def delivered(self) -> int:
        return self._tracker.delivered

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait until every sent event is acknowledged; raise DeliveryError for any that failed."""
        flush(self._open(), self._tracker, topic=self.topic, timeout_s=timeout_s)

    def close(self, timeout_s: float = 60.0) -> None:
        if self._producer is None:
            return
        try:
            self.flush(timeout_s)
        finally:
            self._producer = None

    def _open(self) -> Producer:
        if self._producer is None:
            raise RuntimeError("UsageProducer is closed")
        return self._producer

    def __enter__(self) -> UsageProducer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
