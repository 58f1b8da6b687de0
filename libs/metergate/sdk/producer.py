"""UsageProducer: validates every usage event, then sends it idempotently to `usage.events`.

An invalid event is never sent: `record` raises `InvalidEvent` naming the field and the reason.
Kafka key = customer_id, so one customer's events share a partition. Delivery failures are never
swallowed: they raise `DeliveryError` from `flush()` (and so from `close()` and the `with` exit).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any

from confluent_kafka import Producer

from metergate.domain.records import UsageEvent, now_utc
from metergate.errors import InvalidEvent
from metergate.kafka.producer import DeliveryTracker, make_producer, produce
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


def build_event(
    *,
    customer_id: str | None,
    meter: str | None,
    quantity: Decimal | int | str | None,
    event_id: str | None = None,
    timestamp: datetime | None = None,
    subject_id: str | None = None,
    properties: Mapping[str, str] | None = None,
    source: str | None = None,
) -> UsageEvent:
    """A validated UsageEvent from loose fields (a random event_id and now when not given);
    raises InvalidEvent naming the field."""
    return UsageEvent.parse(
        {
            "event_id": event_id or str(uuid.uuid4()),
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
        self._producer: Producer | None = make_producer(client_config, **dict(producer_overrides or {}))

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
        event_id: str | None = None,
        timestamp: datetime | None = None,
        subject_id: str | None = None,
        properties: Mapping[str, str] | None = None,
        source: str | None = None,
    ) -> UsageEvent:
        """Validate and send one event. Pass a stable `event_id` (e.g. the request id) so a retry of
        yours counts once; without one a random id is used and a retried call counts twice."""
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
        """Send an already validated event."""
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
                event = item if isinstance(item, UsageEvent) else UsageEvent.parse(self._with_source(item))
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
        producer = self._open()
        remaining = producer.flush(timeout_s)
        self._tracker.raise_failures()
        if remaining:
            from metergate.errors import DeliveryError

            raise DeliveryError(f"{remaining} event(s) still unacknowledged after {timeout_s} s")

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
