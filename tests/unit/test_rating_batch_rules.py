"""Rating's rules around the fold, without PostgreSQL or Kafka: collapse to the newest version per
key, the per-record rejection rule, the dead letter, the depletion event, and record accounting."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metergate.domain.ledger import Wallet
from metergate.domain.rating import (
    SERVICE,
    AggregateUpdate,
    RatingFold,
    RecordOutcomes,
    check_aggregate,
    dead_letter,
    depletion_event,
    rate_records,
    record_outcomes,
)
from metergate.domain.records import EntitlementSnapshot, KafkaPosition, LimitKind
from metergate.domain.terms import DatedTerms
from metergate.domain.usage import check_identifier
from metergate.errors import InvalidInput
from tests.unit.test_rating_fold import P0, P1, Store, aggregate, snapshot, with_credit

pytestmark = pytest.mark.unit


def terms_of(*snapshots: EntitlementSnapshot) -> DatedTerms:
    terms = DatedTerms()
    for one in snapshots:
        terms.remember(one)
    return terms


def fold_of(store: Store) -> RatingFold:
    return RatingFold(lines={}, wallets=store.wallets, credits={})


def test_a_batch_collapses_to_the_newest_version_per_key_and_counts_the_rest_stale() -> None:
    snapshots = {"plain": snapshot("plain")}
    records = [
        ((0, "m0"), aggregate("plain", "10", 1)),
        ((1, "m1"), aggregate("plain", "30", 3)),
        ((2, "m2"), aggregate("plain", "20", 2)),  # older than one already in the batch
    ]
    fold = RatingFold(lines={}, wallets={}, credits={})
    rejected = rate_records(fold, records, terms_of(*snapshots.values()), with_credit=set())
    assert rejected == []
    assert (fold.updates, fold.stale, fold.rejected) == (1, 2, 0)
    (usage,) = [line for line in fold.changed.values() if line.aggregate_key is not None]
    # version 3: 30 units, 10 included, 20 x 0.50
    assert (usage.aggregate_version, usage.quantity, usage.amount) == (3, D(30), D("10.00"))
    outcomes = record_outcomes(fold, rejected_at_decode=0, tombstones=0)
    assert outcomes == RecordOutcomes(accepted=1, duplicate=2, rejected=0, tombstone=0)
    assert outcomes.accounts_for(3) and not outcomes.accounts_for(4)


def test_every_version_of_a_customer_with_credit_is_rated() -> None:
    store = Store()
    with_credit(store, "credit", "1000")
    records = [((i, f"m{i}"), aggregate("credit", str(10 + 10 * v), v)) for i, v in enumerate((1, 2, 3))]
    fold = fold_of(store)
    rate_records(fold, records, terms_of(snapshot("credit")), with_credit={"credit"})
    assert (fold.updates, fold.stale) == (3, 0)
    # each version draws what its amount grew by: 5.00, 10.00, 15.00 (10 included, 0.50 a unit)
    assert [e.amount for e in fold.entries] == [D("-5.00"), D("-5.00"), D("-5.00")]


def test_a_record_the_fold_cannot_rate_is_rejected_and_one_rated_unpriced_is_accepted_and_reported() -> None:
    negative = AggregateUpdate.of(aggregate("acme", "5", 1))._replace(value=D(-1))  # past check_aggregate
    unknown = aggregate("nobody", "5", 1)  # no snapshot: rated unpriced, the DLQ hears why
    fine = aggregate("acme", "7", 2)
    records = [((0, "neg"), negative), ((1, "unknown"), unknown), ((2, "fine"), fine)]
    fold = RatingFold(lines={}, wallets={}, credits={})
    rejected = rate_records(fold, records, terms_of(snapshot("acme")), with_credit={"acme"})
    assert [(r.position, r.source, r.rejection.reason) for r in rejected] == [
        (0, "neg", "invalid_value"),
        (1, "unknown", "unknown_plan"),
    ]
    assert (fold.updates, fold.stale, fold.rejected) == (2, 0, 1)
    outcomes = record_outcomes(fold, rejected_at_decode=2, tombstones=1)
    assert outcomes.as_dict() == {"accepted": 2, "duplicate": 0, "rejected": 3, "tombstone": 1}
    assert outcomes.accounts_for(6)


def test_a_dead_letter_names_the_reason_the_original_bytes_and_where_they_were() -> None:
    at = datetime(2026, 3, 2, 12, 30, tzinfo=UTC)
    letter = dead_letter(
        InvalidInput("value: expected a running total >= 0, got -1", reason="invalid_value", field="value"),
        topic="usage.aggregates",
        partition=3,
        offset=41,
        key=b"acme|api_calls",
        value=b"\xc3\x01raw",
        rejected_at=at,
    )
    assert letter.reason == "invalid_value"
    assert letter.message == "value: expected a running total >= 0, got -1"
    assert (letter.original_key, letter.original_value) == (b"acme|api_calls", b"\xc3\x01raw")
    assert letter.source == KafkaPosition(topic="usage.aggregates", partition=3, offset=41)
    assert (letter.service, letter.rejected_at) == (SERVICE, at) == ("rating", at)


def test_credit_running_out_becomes_one_credits_depleted_event_naming_the_usage_that_drew_it() -> None:
    store = Store()
    with_credit(store, "acme", "30")
    records = [((0, "m0"), aggregate("acme", "30", 1)), ((1, "m1"), aggregate("acme", "110", 2))]
    fold = fold_of(store)
    rate_records(fold, records, terms_of(snapshot("acme")), with_credit={"acme"})
    # version 1: 20 x 0.50 = 10.00 drawn; version 2: 100 x 0.50 = 50.00, the 20.00 left is drawn
    assert [e.amount for e in fold.entries] == [D("-10.00"), D("-20.00")]
    (depletion, drawn_by, line) = fold.depletions[0]
    assert len(fold.depletions) == 1
    event = depletion_event(depletion, drawn_by, line)
    assert event.limit_event_id == "acme|credits|USD|credits_depleted|1"
    assert event.kind is LimitKind.CREDITS_DEPLETED
    assert (event.customer_id, event.feature, event.meter) == ("acme", "api_calls", "api_calls")
    assert (event.period_start, event.period_end, event.usage, event.limit) == (P0, P1, D(110), None)
    assert (event.event_id, event.occurred_at) == ("e2", records[1][1].last_event_at)
    assert isinstance(fold.wallets[("acme", "USD")], Wallet)


_ids = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Co", "Cn", "Zs"]), max_size=4),
    st.just(""),
)


@given(customer=_ids, meter=_ids, last_event_id=_ids, subscription=st.none() | _ids, plan=st.none() | _ids)
@settings(max_examples=400, deadline=None)
def test_check_aggregate_refuses_exactly_what_the_identifier_rule_refuses(
    customer: str, meter: str, last_event_id: str, subscription: str | None, plan: str | None
) -> None:
    """The common case is decided in one expression; whatever it lets through, the full rule
    (`usage.check_identifier`, field by field) lets through too, and the other way round."""
    record = AggregateUpdate.of(aggregate("acme", "5", 1))._replace(
        customer_id=customer,
        meter=meter,
        last_event_id=last_event_id,
        subscription_id=subscription,
        plan_key=plan,
    )
    fields = (
        ("customer_id", customer, True),
        ("meter", meter, True),
        ("last_event_id", last_event_id, True),
        ("subscription_id", subscription, False),
        ("plan_key", plan, False),
    )
    first_refused = next(
        (
            rejection
            for name, value, required in fields
            if (rejection := check_identifier(name, value, required=required))
        ),
        None,
    )
    if first_refused is None:
        check_aggregate(record)
    else:
        with pytest.raises(InvalidInput) as refused:
            check_aggregate(record)
        assert (refused.value.field, str(refused.value)) == (first_refused.field, first_refused.message)
