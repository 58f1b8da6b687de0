"""Running totals of a meter per (customer, meter, period): how events fold in (pure).

| aggregation | value after the events folded so far |
| --- | --- |
| SUM | sum of quantities |
| COUNT | number of events (quantity ignored) |
| MAX | largest quantity |
| LATEST | quantity of the event with the latest event time (ties: the one applied last) |
| UNIQUE_COUNT | number of distinct values of the meter's `unique_property` |

SUM, COUNT, MAX and UNIQUE_COUNT do not depend on the order events are folded in; LATEST depends
only on event time (and, for equal times, on the order of the partition log, which replays keep).

**Terms segments.** A period total also keeps, when the customer's terms changed during the period
(an upgrade on day 15, an add-on, a cancellation), the part counted under each terms in force
(`SegmentTotal`, keyed by the start of the terms' validity clipped to the period), so rating prices
each part under its own terms. Each segment folds its own events under the same aggregation as the
total: SUM and COUNT segments add up to the total exactly; a MAX segment is the largest quantity of
its events, a LATEST segment the quantity of its latest event, a UNIQUE_COUNT segment the distinct
values seen in it (a value seen under both terms counts in both). Limits never look at segments:
they apply to the whole period's total. While every event is under the total's own terms (the common
case) the list stays empty and costs nothing.

A `RunningTotal` also carries what makes its updates idempotent across crashes and replays:
`applied_offset`, the highest input offset (of its one partition) already folded in, `version`,
the published version (the metering worker sets it to applied_offset + 1, so a version always
names the same events), and `emitted`, the limit events already sent for this period.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from metergate.domain.records import MAX_QUANTITY, QUANTITY_CONTEXT, Aggregation

_ZERO = Decimal(0)


@dataclass(slots=True)
class RunningTotal:
    aggregation: Aggregation
    value: Decimal = _ZERO
    event_count: int = 0
    version: int = 0
    applied_offset: int = -1
    last_event_ms: int = 0  # event time of the event that decides LATEST (and last_event_at)
    last_event_id: str = ""
    late: bool = False
    uniques: set[str] = field(default_factory=set)
    emitted: set[str] = field(default_factory=set)

    def would_overflow(self, quantity: Decimal) -> bool:
        """Folding `quantity` would take a SUM past decimal(38, 9) (the wire type of every total)."""
        return (
            self.aggregation is Aggregation.SUM and QUANTITY_CONTEXT.add(self.value, quantity) > MAX_QUANTITY
        )

    def fold(self, quantity: Decimal, event_ms: int, event_id: str, unique_value: str | None = None) -> None:
        """Fold one accepted event in. The caller has already checked it is not applied yet."""
        aggregation = self.aggregation
        first = self.event_count == 0
        self.event_count += 1
        if aggregation is Aggregation.SUM:
            self.value = QUANTITY_CONTEXT.add(self.value, quantity)
        elif aggregation is Aggregation.COUNT:
            self.value = QUANTITY_CONTEXT.add(self.value, 1)
        elif aggregation is Aggregation.MAX:
            if first or quantity > self.value:
                self.value = quantity
        elif aggregation is Aggregation.LATEST:
            if first or event_ms >= self.last_event_ms:
                self.value = quantity
        else:  # UNIQUE_COUNT
            if unique_value is None:
                raise ValueError("UNIQUE_COUNT needs the value of the unique property")
            self.uniques.add(unique_value)
            self.value = Decimal(len(self.uniques))
        if first or event_ms >= self.last_event_ms:
            self.last_event_ms = event_ms
            self.last_event_id = event_id

    # -- state encoding (plain JSON-able dict; Decimal as a string, never a float) ------------------
    def to_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "g": self.aggregation.value,
            "v": str(self.value),
            "n": self.event_count,
            "ver": self.version,
            "o": self.applied_offset,
            "t": self.last_event_ms,
            "id": self.last_event_id,
        }
        if self.late:
            state["late"] = True
        if self.uniques:
            state["u"] = sorted(self.uniques)
        if self.emitted:
            state["e"] = sorted(self.emitted)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunningTotal:
        return cls(
            aggregation=Aggregation(state["g"]),
            value=Decimal(state["v"]),
            event_count=state["n"],
            version=state["ver"],
            applied_offset=state["o"],
            last_event_ms=state["t"],
            last_event_id=state["id"],
            late=state.get("late", False),
            uniques=set(state.get("u", ())),
            emitted=set(state.get("e", ())),
        )

    def copy(self) -> RunningTotal:
        return RunningTotal(
            aggregation=self.aggregation,
            value=self.value,
            event_count=self.event_count,
            version=self.version,
            applied_offset=self.applied_offset,
            last_event_ms=self.last_event_ms,
            last_event_id=self.last_event_id,
            late=self.late,
            uniques=set(self.uniques),
            emitted=set(self.emitted),
        )


@dataclass(slots=True)
class SegmentTotal:
    """The events of a period counted under one terms: `start_ms` is the start of the terms'
    validity clipped to the period (None: the period start), `total` their own running value."""

    start_ms: int | None
    subscription_id: str | None
    plan_key: str | None
    plan_version: int | None
    total: RunningTotal

    def to_state(self) -> dict[str, Any]:
        total = self.total
        state: dict[str, Any] = {
            "v": str(total.value),
            "n": total.event_count,
            "t": total.last_event_ms,
            "id": total.last_event_id,
        }
        if self.start_ms is not None:
            state["s"] = self.start_ms
        if self.subscription_id is not None:
            state["sub"] = self.subscription_id
            state["pk"] = self.plan_key
            state["pv"] = self.plan_version
        if total.uniques:
            state["u"] = sorted(total.uniques)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any], aggregation: Aggregation) -> SegmentTotal:
        total = RunningTotal(
            aggregation,
            value=Decimal(state["v"]),
            event_count=state["n"],
            last_event_ms=state["t"],
            last_event_id=state["id"],
            uniques=set(state.get("u", ())),
        )
        return cls(state.get("s"), state.get("sub"), state.get("pk"), state.get("pv"), total)


@dataclass(slots=True)
class PeriodTotal:
    """A running total with what identifies it on usage.aggregates: the customer, the meter, the
    period (milliseconds since the epoch, UTC) and the subscription terms it was counted under.

    `terms_start_ms`: where the validity of those terms starts inside the period (None: at the
    period start); `segments`: None while every event was counted under those terms, else the part
    counted under each terms in force, ordered by start (see the module docstring)."""

    customer_id: str
    meter: str
    period_start_ms: int
    period_end_ms: int
    subscription_id: str | None
    plan_key: str | None
    plan_version: int | None
    total: RunningTotal
    terms_start_ms: int | None = None
    segments: list[SegmentTotal] | None = None

    def fold_segment(
        self,
        start_ms: int | None,
        subscription_id: str | None,
        plan_key: str | None,
        plan_version: int | None,
        quantity: Decimal,
        event_ms: int,
        event_id: str,
        unique_value: str | None,
    ) -> None:
        """Fold an event counted under the terms starting at `start_ms` into its segment (before
        the total folds it: the first call turns what the total holds into the first segment)."""
        segments = self.segments
        if segments is None:
            first = self.total
            kept = RunningTotal(
                first.aggregation,
                value=first.value,
                event_count=first.event_count,
                last_event_ms=first.last_event_ms,
                last_event_id=first.last_event_id,
                uniques=set(first.uniques),
            )
            segments = self.segments = (
                [
                    SegmentTotal(
                        self.terms_start_ms, self.subscription_id, self.plan_key, self.plan_version, kept
                    )
                ]
                if first.event_count
                else []
            )
        for segment in segments:
            if segment.start_ms == start_ms:
                break
        else:
            segment = SegmentTotal(
                start_ms, subscription_id, plan_key, plan_version, RunningTotal(self.total.aggregation)
            )
            segments.append(segment)
            segments.sort(key=lambda s: -1 if s.start_ms is None else s.start_ms)
        if subscription_id is not None:
            segment.subscription_id, segment.plan_key, segment.plan_version = (
                subscription_id,
                plan_key,
                plan_version,
            )
        segment.total.fold(quantity, event_ms, event_id, unique_value)
