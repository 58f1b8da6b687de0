"""Rating: fold aggregate versions into line items and credit-ledger entries (pure: no I/O).

The rating consumer loads, for one poll batch, the current line items of the aggregate keys in it
and the credit wallets of their customers, feeds every record to `RatingFold.apply` in offset
order, and writes what the fold changed in one transaction. The rules:

- An aggregate key's lines carry the version they were computed from; a record whose version is not
  newer is **stale** and changes nothing (replays, redeliveries, out-of-order copies).
- A newer version is priced with the customer's terms in force at its time (`pricing.rate_usage`):
  one usage line per metered feature on the meter, keyed (customer, subscription, feature, period,
  charge). An aggregate without terms segments is priced under the snapshot in force at its last
  event; one with segments (metering counted part of the period under other terms), segment by
  segment under the snapshot in force at each segment's start, a segment starting after the period
  start keyed with that start too. A dated snapshot in force for part of the period has its
  included units prorated by that share (`_rate_in_force`: the rule of `subscriptions.bill_period`).
  The subscription is the aggregate's or segment's (metering assigned the period from it), else the
  snapshot's; the plan, the one whose terms priced the line.
- A line the key had before but the new rating no longer produces (a snapshot arrived for a
  customer rated `unknown_plan`, the plan moved the meter to another feature, the subscription
  changed) is **superseded**: kept for audit with amount 0, so a running total is never billed
  twice.
- Every line whose amount changes moves the customer's credit (`ledger.change_line_amount`).
- Usage lines only: the base-fee and add-on fee lines of a period come from the customer's dated
  snapshots alone, with or without usage (`fee_periods`, `fee_changes` below), invoiced, never
  paid from credits.

The rules of a batch around the fold (`rate_records` and the functions beside it), each decided here
and carried out by the consumer:

- **Newest per key** (`newest_per_key`): of the versions of one aggregate key in a batch only the
  newest is rated, except for customers with credit, every version of whom is rated (each may draw
  or return credit: rule 4 of `metergate.domain.ledger`); the collapsed ones count as stale.
- **Per-record rejection**: a record whose value cannot be rated at all (`InvalidInput` from the
  fold) changes nothing and is *rejected*; a record rated with a reason to report (unpriced, a
  negative base fee) is *accepted* and also dead-lettered. Either way the batch goes on.
- **Dead letters** (`dead_letter`) carry the reason, the message, the original bytes and position,
  `service="rating"` and the time the caller's clock gave; they go to the DLQ in offset order.
- **The depletion event** (`depletion_event`): a credit depletion the ledger recorded becomes one
  `credits_depleted` LimitEvent with the id `ledger.depletion_event_id` gives (stable: a re-sent
  copy is deduplicated by it), naming the line's feature and the aggregate that drew the credit.
- **Accounting** (`record_outcomes`): every consumed record is exactly one of accepted (a newer
  version rated), duplicate (stale or collapsed), rejected (at decode or by the fold) or tombstone;
  a batch whose outcomes do not add up to what it consumed is a fault of ours, never committed.

What rating will not store (`check_aggregate`, `check_snapshot`, applied when a record is decoded):
ids that break the metering worker's id rule (`metergate.domain.usage.check_identifier`: NUL,
control or invisible characters, more than 256 characters), a running total outside
[0, 10^29) (decimal(38, 9), what usage.aggregates carries), a snapshot currency that is not three
capital letters. Such a record goes to the DLQ with its reason; every other customer is billed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

from metergate.domain.ledger import (
    CreditChange,
    Depletion,
    Entry,
    Wallet,
    change_line_amount,
    depletion_event_id,
)
from metergate.domain.metering import millis
from metergate.domain.periods import Period, period_for
from metergate.domain.pricing import (
    Charge,
    ChargeStatus,
    ChargeType,
    PricingError,
    Rating,
    line_key,
    plain,
    rate_usage,
    usage_figures,
)
from metergate.domain.records import (
    MAX_QUANTITY,
    DeadLetter,
    EntitlementSnapshot,
    FeatureKind,
    KafkaPosition,
    LimitEvent,
    LimitKind,
    TermsSegment,
    UsageAggregate,
    aggregate_key,
)
from metergate.domain.subscriptions import (
    _shown_share,
    fee_lines_of_snapshots,
    prorated_included,
    share_in_force,
)
from metergate.domain.terms import DatedTerms
from metergate.domain.usage import _plain, check_identifier  # _plain: the identifier rule's common case
from metergate.errors import InvalidInput

ZERO = Decimal(0)
BASE_FEE = "base_fee"  # the feature name of a base-fee line
SERVICE = "rating"  # what rating's dead letters name as their `service`
S = TypeVar("S")  # the caller's handle on a consumed record (a Kafka message, a test's label)


class SegmentUpdate(NamedTuple):
    """A `TermsSegment` of an aggregate as a plain tuple (what the fast reader decodes into)."""

    start: datetime
    subscription_id: str | None
    plan_key: str | None
    plan_version: int | None
    value: Decimal
    event_count: int

    @classmethod
    def of(cls, segment: TermsSegment) -> SegmentUpdate:
        return cls(
            segment.start,
            segment.subscription_id,
            segment.plan_key,
            segment.plan_version,
            segment.value,
            segment.event_count,
        )


class AggregateUpdate(NamedTuple):
    """The fields of a `UsageAggregate` that rating reads, plus its key, as a plain tuple.

    What the consumer's hot path decodes into (`metergate.wire.fastwire.read_aggregate`): a
    validated pydantic model costs ~3 us per record, this ~0.3 us. The fold accepts either.
    """

    key: str  # aggregate_key(customer_id, meter, period_start)
    customer_id: str
    meter: str
    period_start: datetime
    period_end: datetime
    value: Decimal
    event_count: int
    version: int
    last_event_at: datetime
    last_event_id: str
    subscription_id: str | None
    plan_key: str | None
    plan_version: int | None
    segments: tuple[SegmentUpdate, ...] = ()

    @classmethod
    def of(cls, aggregate: UsageAggregate) -> AggregateUpdate:
        return cls(
            aggregate_key(aggregate.customer_id, aggregate.meter, aggregate.period_start),
            aggregate.customer_id,
            aggregate.meter,
            aggregate.period_start,
            aggregate.period_end,
            aggregate.value,
            aggregate.event_count,
            aggregate.version,
            aggregate.last_event_at,
            aggregate.last_event_id,
            aggregate.subscription_id,
            aggregate.plan_key,
            aggregate.plan_version,
            tuple(SegmentUpdate.of(segment) for segment in aggregate.segments),
        )


#: what the fold rates: the model (tests, tools) or its tuple (the consumer's hot path)
RatingInput = UsageAggregate | AggregateUpdate


def _invalid(name: str, value: object, *, required: bool = True) -> None:
    rejection = check_identifier(name, value, required=required)
    if rejection is not None:
        raise InvalidInput(rejection.message, reason="invalid_field", field=name)


def check_aggregate(aggregate: RatingInput) -> None:
    """Raise InvalidInput (reason, field) for an aggregate rating must not price or store."""
    subscription_id, plan_key = aggregate.subscription_id, aggregate.plan_key
    if not (  # the common case, decided in one expression (the full checks cost ~1 us a record)
        _plain(aggregate.customer_id)
        and _plain(aggregate.meter)
        and _plain(aggregate.last_event_id)
        and (subscription_id is None or _plain(subscription_id))
        and (plan_key is None or _plain(plan_key))
    ):
        _invalid("customer_id", aggregate.customer_id)
        _invalid("meter", aggregate.meter)
        _invalid("last_event_id", aggregate.last_event_id)
        _invalid("subscription_id", subscription_id, required=False)
        _invalid("plan_key", plan_key, required=False)
    _check_value("value", aggregate.value)
    segments: Sequence[TermsSegment | SegmentUpdate] = aggregate.segments
    for index, segment in enumerate(segments):  # none while one terms is in force
        _invalid(f"segments[{index}].subscription_id", segment.subscription_id, required=False)
        _invalid(f"segments[{index}].plan_key", segment.plan_key, required=False)
        _check_value(f"segments[{index}].value", segment.value)


def _check_value(name: str, value: Decimal) -> None:
    if not value.is_finite() or value < ZERO:
        raise InvalidInput(
            f"{name}: expected a running total >= 0, got {value}", reason="invalid_value", field=name
        )
    if value > MAX_QUANTITY:
        raise InvalidInput(
            f"{name}: running total {value:.6E} does not fit decimal(38, 9) (must be below 10^29)",
            reason="invalid_value",
            field=name,
        )


def check_snapshot(snapshot: EntitlementSnapshot) -> None:
    """Raise InvalidInput for an entitlement snapshot whose ids or currency rating cannot store."""
    _invalid("customer_id", snapshot.customer_id)
    _invalid("subscription_id", snapshot.subscription_id, required=False)
    _invalid("plan_key", snapshot.plan_key, required=False)
    currency = snapshot.currency
    if not (len(currency) == 3 and currency.isascii() and currency.isupper() and currency.isalpha()):
        raise InvalidInput(
            f"currency: expected an ISO 4217 code of three capital letters, got {currency!r}",
            reason="invalid_field",
            field="currency",
        )
    for index, feature in enumerate(snapshot.features):
        _invalid(f"features[{index}].feature", feature.feature)
        _invalid(f"features[{index}].meter", feature.meter, required=False)


class Line(NamedTuple):
    """A line item as stored: the latest rating of one charge of one customer's period.

    Immutable (a NamedTuple: built once per record on the hot path, cheaper than a frozen dataclass).
    """

    line_key: str
    aggregate_key: str | None  # None for the base fee
    customer_id: str
    subscription_id: str  # "" when the customer has no subscription
    plan_key: str | None
    plan_version: int | None
    feature: str
    meter: str | None
    charge: ChargeType
    status: ChargeStatus
    unpriced_reason: str | None
    period_start: datetime
    period_end: datetime
    currency: str
    quantity: Decimal
    included_quantity: Decimal
    billable_quantity: Decimal
    pricing_model: str
    unit_price: Decimal | None
    amount: Decimal
    credits_applied: Decimal
    detail: str
    aggregate_version: int | None
    snapshot_version: int | None
    event_count: int
    last_event_id: str | None
    last_event_at: datetime | None

    @property
    def amount_due(self) -> Decimal:
        return self.amount - self.credits_applied


class Applied(NamedTuple):
    """The outcome of one record: `stale`, or the lines it changed and (maybe) why it is also DLQ'd."""

    stale: bool
    lines: tuple[Line, ...] = ()
    rejection: InvalidInput | None = None


_STALE = Applied(stale=True)
_new = tuple.__new__  # builds a NamedTuple from a tuple of every field, without its Python-level __new__
_NO_CREDITS: Mapping[str, Decimal] = MappingProxyType({})

#: charge -> (customer, subscription, feature, period) -> line_key: every version of a key rates the
#: same lines, and building a key (escaping each part) costs several times a lookup. One memo per
#: charge type, found by identity: an enum member hashes in Python, a tuple of strings in C.
_LINE_KEYS: dict[ChargeType, dict[tuple[str, str, str, str], str]] = {charge: {} for charge in ChargeType}
_USAGE_KEYS = _LINE_KEYS[ChargeType.USAGE]
_MAX_LINE_KEYS = 100_000  # per charge type (~35 MB at most, measured); a clear costs one rebuild a key


def _line_key(customer_id: str, subscription: str, feature: str, period: str, charge: ChargeType) -> str:
    memo = _USAGE_KEYS if charge is ChargeType.USAGE else _LINE_KEYS[charge]
    parts = (customer_id, subscription, feature, period)
    found = memo.get(parts)
    if found is None:
        if len(memo) >= _MAX_LINE_KEYS:
            memo.clear()
        found = memo[parts] = line_key(customer_id, subscription, feature, period, charge)
    return found


def _newest_version(lines: dict[str, Line]) -> int | None:
    """The newest aggregate version among a key's lines (None when none carries one)."""
    newest: int | None = None
    for line in lines.values():
        version = line.aggregate_version
        if version is not None and (newest is None or version > newest):
            newest = version
    return newest


@dataclass
class RatingFold:
    """State of one batch: starts from what the database holds, accumulates what changes."""

    #: aggregate_key -> {line_key: Line}, as loaded (every key of the batch, possibly empty)
    lines: dict[str, dict[str, Line]]
    #: (customer_id, currency) -> wallet; only customers with a credit account
    wallets: dict[tuple[str, str], Wallet]
    #: line_key -> credit used per grant (only lines that use credit)
    credits: dict[str, dict[str, Decimal]]

    changed: dict[str, Line] = field(default_factory=dict)
    #: (customer, period start) whose invoice totals may have changed: a line was added, or its
    #: amount, credit, status, currency, subscription or period end moved (refreshing any other
    #: pair would recompute the same totals)
    invoices: set[tuple[str, datetime]] = field(default_factory=set)
    entries: list[Entry] = field(default_factory=list)
    depletions: list[tuple[Depletion, RatingInput, Line]] = field(default_factory=list)
    updates: int = 0  # records rated (newer versions; an unpriced one may also be reported to the DLQ)
    stale: int = 0  # records older than or equal to the stored version, or superseded in their batch
    rejected: int = 0  # records that could not be rated at all (the caller counts them: DLQ only)

    def absorb(self, other: RatingFold) -> None:
        """Add what `other` did: a fold of the same batch over *other customers* (their keys, lines,
        and credit are disjoint from this fold's, so folding them apart changes nothing)."""
        self.lines.update(other.lines)
        self.credits.update(other.credits)
        self.wallets.update(other.wallets)
        self.changed.update(other.changed)
        self.invoices |= other.invoices
        self.entries.extend(other.entries)
        self.depletions.extend(other.depletions)
        self.updates += other.updates
        self.stale += other.stale
        self.rejected += other.rejected

    def version_of(self, key: str) -> int | None:
        lines = self.lines.get(key)
        if not lines:
            return None
        return _newest_version(lines)

    def apply(
        self, aggregate: RatingInput, snapshot: EntitlementSnapshot | None, terms: DatedTerms | None = None
    ) -> Applied:
        """Rate one aggregate version (raises InvalidInput when its value cannot be rated at all).

        `snapshot`: the customer's terms in force at the aggregate's last event; `terms`: every
        snapshot of the customer (`DatedTerms`), for the terms in force at each segment's start and
        the share of the period each is in force (without it, the whole total is priced under
        `snapshot`, in full)."""
        key = aggregate.key
        previous = self.lines.get(key)
        if previous:
            current = _newest_version(previous)
            if current is not None and aggregate.version <= current:
                self.stale += 1
                return _STALE
        customer = aggregate.customer_id
        segmented = terms is not None and bool(aggregate.segments)
        usage = None
        if segmented:
            rating = _NO_RATING  # each segment is rated on its own, below
        elif terms is not None and snapshot is not None and customer in terms.dated:
            rating = _rate_in_force(aggregate, aggregate.value, snapshot, terms)  # maybe part of the period
        elif snapshot is not None and (usage := usage_figures(aggregate.meter, aggregate.value, snapshot)):
            rating = _NO_RATING  # the common case: `rate_usage`'s charges, as bare figures (below)
        else:
            rating = rate_usage(aggregate.meter, aggregate.value, snapshot)  # undated: in force always
        rejection = rating.rejection
        if snapshot is not None and snapshot.base_fee < ZERO:  # still rated; the record goes to the DLQ
            rejection = rejection or PricingError(
                f"base_fee: expected >= 0, got {snapshot.base_fee}", field="base_fee"
            )
        subscription = aggregate.subscription_id or (snapshot.subscription_id if snapshot else None) or ""
        period = key.rsplit("|", 1)[1]  # the period start as aggregate_key writes it (UTC ISO)
        if previous is None:
            previous = self.lines[key] = {}
        now_lines: dict[str, Line] = {}
        if segmented:
            assert terms is not None
            rejection = self._segments(aggregate, terms, period, previous, now_lines) or rejection
        for charge in rating.charges:
            lk = _line_key(customer, subscription, charge.feature, period, charge.charge)
            now_lines[lk] = self._line(lk, key, aggregate, snapshot, subscription, charge, previous.get(lk))
        if usage is not None:
            assert snapshot is not None
            quantity, figures = usage
            # what `_line` makes of `rate_usage`'s charges, field for field (a unit test compares)
            plan_key = snapshot.plan_key or aggregate.plan_key
            plan_version = snapshot.plan_version or aggregate.plan_version
            for feature, included, pricing_model, billable, unit_price, amount, detail in figures:
                lk = _line_key(customer, subscription, feature, period, _USAGE)
                old = previous.get(lk)
                now_lines[lk] = _new(
                    Line,
                    (
                        lk,  # line_key
                        key,  # aggregate_key
                        customer,  # customer_id
                        subscription,  # subscription_id
                        plan_key,  # plan_key
                        plan_version,  # plan_version
                        feature,  # feature
                        aggregate.meter,  # meter
                        _USAGE,  # charge
                        _RATED,  # status
                        None,  # unpriced_reason
                        aggregate.period_start,  # period_start
                        aggregate.period_end,  # period_end
                        snapshot.currency,  # currency
                        quantity,  # quantity
                        included,  # included_quantity
                        billable,  # billable_quantity
                        pricing_model,  # pricing_model
                        unit_price,  # unit_price
                        amount,  # amount
                        old.credits_applied if old else ZERO,  # credits_applied
                        detail,  # detail
                        aggregate.version,  # aggregate_version
                        snapshot.version,  # snapshot_version
                        aggregate.event_count,  # event_count
                        aggregate.last_event_id,  # last_event_id
                        aggregate.last_event_at,  # last_event_at
                    ),
                )
        for lk, old in previous.items():
            if lk not in now_lines and old.status is not ChargeStatus.SUPERSEDED:
                now_lines[lk] = old._replace(
                    status=ChargeStatus.SUPERSEDED,
                    amount=ZERO,
                    detail=f"superseded by version {aggregate.version}",
                    aggregate_version=aggregate.version,
                )
        changed: list[Line] = []
        credits, wallets, invoices, all_changed = self.credits, self.wallets, self.invoices, self.changed
        for lk, rated in now_lines.items():
            before = previous.get(lk)
            if not credits.get(lk) and (not wallets or (rated.customer_id, rated.currency) not in wallets):
                moved = rated  # no credit used, none to draw: the common case (`_move_credit` says so too)
            else:
                moved = self._move_credit(rated, before, aggregate)
            if (  # the invoice totals of the (customer, period) may move: see `invoices`
                before is None
                or before.amount != moved.amount
                or before.credits_applied != moved.credits_applied
                or before.status is not moved.status
                or before.currency != moved.currency
                or before.subscription_id != moved.subscription_id
                or before.period_end != moved.period_end
            ):
                invoices.add((moved.customer_id, moved.period_start))
            previous[lk] = moved
            all_changed[lk] = moved
            changed.append(moved)
        self.updates += 1
        return _new(Applied, (False, tuple(changed), rejection))  # type: ignore[no-any-return]

    def _segments(
        self,
        aggregate: RatingInput,
        terms: DatedTerms,
        period: str,
        previous: dict[str, Line],
        now_lines: dict[str, Line],
    ) -> InvalidInput | None:
        """The usage lines of an aggregate counted under several terms: each segment priced under
        the terms in force at its start, its included units prorated by their share of the period
        (one line per feature and segment; the key of a segment starting after the period start
        names that start)."""
        customer, key = aggregate.customer_id, aggregate.key
        rejection: InvalidInput | None = None
        for segment in aggregate.segments:
            snapshot = terms.at(customer, millis(segment.start))
            rating = (
                rate_usage(aggregate.meter, segment.value, None)
                if snapshot is None
                else _rate_in_force(aggregate, segment.value, snapshot, terms)
            )
            rejection = rejection or rating.rejection
            subscription = segment.subscription_id or (snapshot.subscription_id if snapshot else None) or ""
            since = (
                None if segment.start == aggregate.period_start else segment.start.astimezone(UTC).isoformat()
            )
            for charge in rating.charges:
                lk = line_key(customer, subscription, charge.feature, period, charge.charge, since=since)
                now_lines[lk] = self._line(
                    lk, key, aggregate, snapshot, subscription, charge, previous.get(lk), segment
                )
        return rejection

    def _line(
        self,
        lk: str,
        key: str,
        aggregate: RatingInput,
        snapshot: EntitlementSnapshot | None,
        subscription: str,
        charge: Charge,
        old: Line | None,
        segment: SegmentUpdate | TermsSegment | None = None,
    ) -> Line:
        counted = aggregate if segment is None else segment  # whose events the line prices
        # every field, in field order, without the NamedTuple's Python-level __new__ (~0.3 us less)
        return _new(  # type: ignore[no-any-return]
            Line,
            (
                lk,  # line_key
                key,  # aggregate_key
                aggregate.customer_id,  # customer_id
                subscription,  # subscription_id
                # the plan whose terms priced the line (metering's stamp when no terms priced it: it
                # may have counted an event before the snapshot in force at its time reached it)
                (snapshot.plan_key if snapshot else None) or counted.plan_key,  # plan_key
                (snapshot.plan_version if snapshot else None) or counted.plan_version,  # plan_version
                charge.feature,  # feature
                aggregate.meter,  # meter
                charge.charge,  # charge
                charge.status,  # status
                charge.unpriced_reason.value if charge.unpriced_reason else None,  # unpriced_reason
                aggregate.period_start,  # period_start
                aggregate.period_end,  # period_end
                charge.currency,  # currency
                charge.quantity,  # quantity
                charge.included_quantity,  # included_quantity
                charge.billable_quantity,  # billable_quantity
                charge.pricing_model,  # pricing_model
                charge.unit_price,  # unit_price
                charge.amount,  # amount
                old.credits_applied if old else ZERO,  # credits_applied
                charge.detail,  # detail
                aggregate.version,  # aggregate_version
                snapshot.version if snapshot else None,  # snapshot_version
                counted.event_count,  # event_count
                aggregate.last_event_id,  # last_event_id
                aggregate.last_event_at,  # last_event_at
            ),
        )

    def _move_credit(self, line: Line, old: Line | None, aggregate: RatingInput) -> Line:
        old_amount = old.amount if old else ZERO
        old_credits = self.credits.get(line.line_key, _NO_CREDITS)
        if not old_credits and (not self.wallets or (line.customer_id, line.currency) not in self.wallets):
            return line  # no credit used, none to draw: the common case
        if line.amount == old_amount and (not old_credits or (old and old.currency == line.currency)):
            return line
        if old is not None and old.currency != line.currency and old_credits:
            # The charge changed currency (a new plan): give back all credit in the old currency,
            # then draw afresh in the new one.
            back = change_line_amount(
                self.wallets.get((line.customer_id, old.currency)),
                line_key=line.line_key,
                customer_id=line.customer_id,
                old_amount=old_amount,
                new_amount=ZERO,
                credits_by_grant=old_credits,
                version=aggregate.version,
                used_at=aggregate.last_event_at,
            )
            self._record(back, aggregate, line)
            old_amount, old_credits = ZERO, {}
        change = change_line_amount(
            self.wallets.get((line.customer_id, line.currency)),
            line_key=line.line_key,
            customer_id=line.customer_id,
            old_amount=old_amount,
            new_amount=line.amount,
            credits_by_grant=old_credits,
            version=aggregate.version,
            used_at=aggregate.last_event_at,
        )
        if change.credits_applied != line.credits_applied:
            line = line._replace(credits_applied=change.credits_applied)
        self._record(change, aggregate, line)
        return line

    def _record(self, change: CreditChange, aggregate: RatingInput, line: Line) -> None:
        self.entries.extend(change.entries)
        if change.credits_by_grant:
            self.credits[line.line_key] = change.credits_by_grant
        else:
            self.credits.pop(line.line_key, None)
        if change.depletion is not None:
            self.depletions.append((change.depletion, aggregate, line))


_NO_RATING = Rating(())
_USAGE, _RATED = ChargeType.USAGE, ChargeStatus.RATED
#: (id(snapshot), share) -> (snapshot, the snapshot with every metered feature's included units x share)
_PRORATED: dict[tuple[int, Fraction], tuple[EntitlementSnapshot, EntitlementSnapshot]] = {}


def _rate_in_force(
    aggregate: RatingInput, quantity: Decimal, snapshot: EntitlementSnapshot, terms: DatedTerms
) -> Rating:
    """`quantity` of the aggregate's meter priced under `snapshot`, its included units prorated by
    the share of the period the snapshot is in force among the customer's terms (the rule of
    `subscriptions.bill_period`: `prorated_included`, the share the base fee is billed for)."""
    if snapshot.subscription_id is None:
        return rate_usage(aggregate.meter, quantity, snapshot)  # nothing priced
    period = Period(aggregate.period_start, aggregate.period_end)
    share = share_in_force(terms.of(aggregate.customer_id), snapshot, period)
    if share == 1:
        return rate_usage(aggregate.meter, quantity, snapshot)
    memo = _PRORATED.get((id(snapshot), share))
    if memo is None or memo[0] is not snapshot:
        features = tuple(
            # plain: a snapshot read from the topic gives every number 9 decimals (Avro's scale);
            # the plan's own precision is that of its plain form (whole units for a whole number)
            feature.model_copy(update={"included": prorated_included(plain(feature.included), share)})
            if feature.kind is FeatureKind.METERED
            else feature
            for feature in snapshot.features
        )
        if len(_PRORATED) >= 4096:
            _PRORATED.clear()
        memo = _PRORATED[(id(snapshot), share)] = (
            snapshot,
            snapshot.model_copy(update={"features": features}),
        )
    rating = rate_usage(aggregate.meter, quantity, memo[1])
    period_ms = millis(aggregate.period_end) - millis(aggregate.period_start)
    shown = _shown_share(period_ms * share.numerator // share.denominator, period_ms)
    terms_of = f"{snapshot.plan_key} v{snapshot.plan_version} for {shown}"
    return rating._replace(
        charges=tuple(charge._replace(detail=f"{charge.detail}; {terms_of}") for charge in rating.charges)
    )


# -- the rules of a batch around the fold ------------------------------------------------------------


def newest_per_key(
    records: Sequence[tuple[S, RatingInput]], with_credit: set[str]
) -> list[tuple[S, RatingInput]]:
    """The batch's records to rate, in order: every version of a customer with credit (each version
    may draw or return credit: rule 4 of metergate.domain.ledger), only the newest version of every
    other key (its intermediate versions within one batch change nothing the newest does not)."""
    newest: dict[str, int] = {}
    for index, (_, aggregate) in enumerate(records):
        if aggregate.customer_id in with_credit:
            continue
        key = aggregate.key
        held = newest.get(key)
        if held is None or aggregate.version >= records[held][1].version:
            newest[key] = index
    if len(newest) == len(records):
        return list(records)
    keep = set(newest.values())
    return [r for index, r in enumerate(records) if index in keep or r[1].customer_id in with_credit]


class Rejected(NamedTuple):
    """A record of the batch the DLQ must hear of: where it was (`position` in the batch's
    records, offset order), the caller's handle on it, and why."""

    position: int
    source: Any
    rejection: InvalidInput


def rate_records(
    fold: RatingFold,
    records: Sequence[tuple[tuple[int, S], RatingInput]],
    terms: DatedTerms,
    with_credit: set[str],
) -> list[Rejected]:
    """Fold ((index, source), aggregate) records of one batch into `fold`, in order, after keeping
    the newest version per key (`newest_per_key`; the collapsed count as stale), each priced under
    the customer's terms in force at its events' time (`terms`: at its last event, and per terms
    segment at the segment's start). Returns what the DLQ must hear of, in the order found: records
    rejected (counted in `fold.rejected`, nothing changed) and records rated with a reason to
    report (counted as updates)."""
    kept = newest_per_key(records, with_credit)
    fold.stale += len(records) - len(kept)
    rejected: list[Rejected] = []
    newest, dated = terms.newest_by_customer.get, terms.dated
    for (index, source), aggregate in kept:
        customer = aggregate.customer_id
        # a customer whose terms are all undated (a catalog file) has one terms: no clock to read
        snapshot = (
            terms.at(customer, millis(aggregate.last_event_at)) if customer in dated else newest(customer)
        )
        try:
            applied = fold.apply(aggregate, snapshot, terms)
        except InvalidInput as exc:
            fold.rejected += 1
            rejected.append(Rejected(index, source, exc))
            continue
        if applied.rejection is not None:
            rejected.append(Rejected(index, source, applied.rejection))
    return rejected


def dead_letter(
    rejection: InvalidInput,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    rejected_at: datetime,
) -> DeadLetter:
    """The DLQ record of a record rating cannot take (or can only rate with a reason to report)."""
    return DeadLetter(
        reason=rejection.reason,
        message=str(rejection),
        original_key=key,
        original_value=value,
        source=KafkaPosition(topic=topic, partition=partition, offset=offset),
        service=SERVICE,
        rejected_at=rejected_at,
    )


def depletion_event(depletion: Depletion, aggregate: RatingInput, line: Line) -> LimitEvent:
    """The `credits_depleted` signal of a depletion the ledger recorded (rule 7 of
    metergate.domain.ledger): its id is stable, so a re-sent copy is deduplicated by it."""
    return LimitEvent(
        limit_event_id=depletion_event_id(depletion.customer_id, depletion.currency, depletion.sequence),
        kind=LimitKind.CREDITS_DEPLETED,
        customer_id=depletion.customer_id,
        feature=line.feature,
        meter=aggregate.meter,
        period_start=aggregate.period_start,
        period_end=aggregate.period_end,
        usage=aggregate.value,
        limit=None,
        event_id=aggregate.last_event_id,
        occurred_at=aggregate.last_event_at,
    )


class RecordOutcomes(NamedTuple):
    """What became of a batch's consumed records; each is exactly one of these."""

    accepted: int  # a newer version rated (an unpriced one is also dead-lettered)
    duplicate: int  # a version not newer than the stored one, or collapsed into a newer one
    rejected: int  # refused at decode or by the fold: dead-lettered only
    tombstone: int  # a tombstone of the compacted topic: nothing to rate

    def as_dict(self) -> dict[str, int]:
        return self._asdict()

    def accounts_for(self, consumed: int) -> bool:
        return sum(self) == consumed


def record_outcomes(fold: RatingFold, *, rejected_at_decode: int, tombstones: int) -> RecordOutcomes:
    """The outcomes of a folded batch (`accounts_for(consumed)` must hold before it commits)."""
    return RecordOutcomes(fold.updates, fold.stale, rejected_at_decode + fold.rejected, tombstones)


# -- fees: the base-fee and add-on fee lines of a customer's periods ----------------------------------


def fee_line_key(
    customer_id: str, subscription_id: str, feature: str, period_start: datetime, stretch_start: datetime
) -> str:
    """Identity of a fee line: (customer, subscription, feature, period start, stretch start).

    `line_key` of the charge with the start of the stretch appended (an ISO timestamp, no `|`): the
    same stretch of terms gives the same key in every run and replay, and a stretch cut shorter by a
    change later in the period keeps its key (its amount moves)."""
    stretch = stretch_start.astimezone(UTC).isoformat()
    return f"{line_key(customer_id, subscription_id, feature, period_start, ChargeType.BASE_FEE)}|{stretch}"


def terms_version(snapshots: Iterable[EntitlementSnapshot]) -> int:
    """The version of what a customer's fee lines are computed from: the highest snapshot version
    held (every new snapshot has a higher one). Fee lines carry it as `snapshot_version`, and a
    stored line only ever moves to a higher one, so a worker holding older terms cannot overwrite
    lines written from newer ones."""
    return max((snapshot.version for snapshot in snapshots), default=0)


_MS = timedelta(milliseconds=1)


def fee_periods(
    snapshots: Sequence[EntitlementSnapshot], now: datetime, lookback: int, *, clock_only: bool = False
) -> list[Period]:
    """The periods whose fee lines a customer's snapshots call for at `now`, oldest first.

    - The **current period** (the one containing `now`), by the anchor and reset period of the
      customer's newest snapshot with a subscription: billed when it starts, usage or not.
    - With `clock_only` False (the customer's snapshots changed), also every earlier period a
      **dated** snapshot with a subscription (or a cancellation) overlaps, at most `lookback`
      periods before the current one: a change, a cancellation or an upgrade whose snapshot is read
      after a period boundary, and periods that started while rating was not running. An undated
      snapshot (a catalog file's) is in force "from now on": it bills the current period only, so
      re-applying a file never rewrites a past period.
    - A period that has not started yet is never billed (its start will bill it).
    Empty when the customer never had a subscription.
    """
    subscribed = [s for s in snapshots if s.subscription_id is not None]
    if not subscribed:
        return []
    newest = max(subscribed, key=lambda s: s.version)
    current = period_for(now, newest.billing_anchor, newest.reset_period)
    periods = [current]
    if clock_only or lookback <= 0:
        return periods
    dated = [s for s in snapshots if s.valid_from is not None or s.valid_to is not None]
    if not dated:  # undated terms bill the current period only (no earlier period to look at)
        return periods
    period = current
    for _ in range(lookback):
        period = period_for(period.start - _MS, newest.billing_anchor, newest.reset_period)
        if any(_overlaps(s, period) for s in dated):
            periods.append(period)
    return sorted(periods, key=lambda p: p.start)


def _overlaps(snapshot: EntitlementSnapshot, period: Period) -> bool:
    return (snapshot.valid_from is None or snapshot.valid_from < period.end) and (
        snapshot.valid_to is None or snapshot.valid_to > period.start
    )


def fee_changes(
    customer_id: str,
    period: Period,
    snapshots: Sequence[EntitlementSnapshot],
    stored: Mapping[str, Line],
) -> list[Line]:
    """The fee lines to write for one customer's `period`, given its snapshots and the fee lines
    stored for that period (`stored`: line_key -> Line, charge `base_fee`).

    The lines wanted are `subscriptions.fee_lines_of_snapshots` (the period cut where the terms
    change, each stretch prorated by time in force, rounded once per line), keyed by
    `fee_line_key`. Returned: each wanted line that is missing or differs from the stored one, and
    each stored line no longer wanted, **superseded** (kept for audit, amount 0), as usage lines are;
    all with `snapshot_version` = `terms_version(snapshots)`. A stored line equal to the wanted
    one is not returned, so a replay or a restart writes nothing. Fee lines draw no credit: they are
    invoiced (rule 2 of `metergate.domain.ledger`)."""
    version = terms_version(snapshots)
    wanted: dict[str, Line] = {}
    for stretch, charge in fee_lines_of_snapshots(snapshots, period):
        snapshot = stretch.snapshot
        subscription = snapshot.subscription_id or ""
        lk = fee_line_key(customer_id, subscription, charge.feature, period.start, stretch.start)
        wanted[lk] = Line(
            lk,  # line_key
            None,  # aggregate_key
            customer_id,
            subscription,
            snapshot.plan_key,
            snapshot.plan_version,
            charge.feature,
            None,  # meter
            charge.charge,
            charge.status,
            None,  # unpriced_reason
            period.start,
            period.end,
            charge.currency,
            charge.quantity,
            charge.included_quantity,
            charge.billable_quantity,
            charge.pricing_model,
            charge.unit_price,
            charge.amount,
            ZERO,  # credits_applied
            charge.detail,
            None,  # aggregate_version
            version,  # snapshot_version
            0,  # event_count
            None,  # last_event_id
            None,  # last_event_at
        )
    changes: list[Line] = []
    for lk, line in wanted.items():
        old = stored.get(lk)
        if old is None or old._replace(snapshot_version=version) != line:
            changes.append(line)
    for lk, old in stored.items():
        if lk not in wanted and old.status is not ChargeStatus.SUPERSEDED:
            changes.append(
                old._replace(
                    status=ChargeStatus.SUPERSEDED,
                    amount=ZERO,
                    detail=f"superseded by snapshot version {version}",
                    snapshot_version=version,
                )
            )
    return changes
