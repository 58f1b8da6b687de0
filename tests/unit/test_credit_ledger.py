"""Credit ledger rules: drawdown order, refunds, expiry, depletion, and balance = sum of entries."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metergate.domain.ledger import (
    Entry,
    EntryType,
    Grant,
    GrantError,
    Wallet,
    change_line_amount,
    drawdown_order,
    expire_grants,
    validate_grant,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def grant(
    grant_id: str, amount: str, priority: int = 10, expires_in_days: int | None = None, **kw: object
) -> Grant:
    return Grant(
        grant_id=grant_id,
        customer_id="acme",
        currency="USD",
        amount=D(amount),
        priority=priority,
        granted_at=kw.pop("granted_at", T0),  # type: ignore[arg-type]
        expires_at=None if expires_in_days is None else T0 + timedelta(days=expires_in_days),
        **kw,  # type: ignore[arg-type]
    )


def wallet(*grants: Grant) -> tuple[Wallet, list[Entry]]:
    w = Wallet("acme", "USD")
    return w, [w.add_grant(g) for g in grants]


def move(w: Wallet, line: str, old: str, new: str, by_grant: dict[str, D], version: int, at: datetime = T0):
    return change_line_amount(
        w,
        line_key=line,
        customer_id="acme",
        old_amount=D(old),
        new_amount=D(new),
        credits_by_grant=by_grant,
        version=version,
        used_at=at,
    )


def test_drawdown_order_is_priority_then_earliest_expiry() -> None:
    grants = [
        grant("promo", "10", priority=20, expires_in_days=5),
        grant("prepaid", "10", priority=10, expires_in_days=None),
        grant("trial", "10", priority=10, expires_in_days=30),
        grant("bonus", "10", priority=10, expires_in_days=10),
    ]
    assert [g.grant_id for g in drawdown_order(grants)] == ["bonus", "trial", "prepaid", "promo"]


def test_overage_draws_two_grants_in_order_and_depletes_once() -> None:
    high = grant("high", "30.00", priority=1, expires_in_days=60)  # drawn first despite the later expiry
    low = grant("low", "20.00", priority=5, expires_in_days=10)
    w, entries = wallet(low, high)

    first = move(w, "line-a", "0", "25.00", {}, version=1)
    assert [(e.grant_id, e.amount) for e in first.entries] == [("high", D("-25.00"))]
    assert first.depletion is None

    second = move(w, "line-a", "25.00", "40.00", first.credits_by_grant, version=2)
    assert [(e.grant_id, e.amount) for e in second.entries] == [("high", D("-5.00")), ("low", D("-10.00"))]
    assert second.credits_by_grant == {"high": D("30.00"), "low": D("10.00")}

    third = move(w, "line-a", "40.00", "75.00", second.credits_by_grant, version=3)
    assert [(e.grant_id, e.amount) for e in third.entries] == [("low", D("-10.00"))]
    assert third.credits_applied == D("50.00")  # 25.00 of the 75.00 stays due
    assert third.depletion is not None and third.depletion.sequence == 1
    assert w.balance == 0

    fourth = move(w, "line-a", "75.00", "90.00", third.credits_by_grant, version=4)
    assert fourth.entries == () and fourth.depletion is None  # nothing left: no second depletion

    all_entries = entries + list(first.entries + second.entries + third.entries)
    assert sum(e.amount for e in all_entries) == w.balance == 0
    assert {e.idempotency_key for e in third.entries} == {"usage_debit:line-a|v3|low"}


def test_a_grant_pays_only_for_usage_inside_its_validity() -> None:
    w, _ = wallet(
        grant("short", "10", priority=1, expires_in_days=1),
        grant("later", "10", priority=2, effective_at=T0 + timedelta(days=3)),
    )
    before_expiry = move(w, "l1", "0", "4", {}, 1, at=T0 + timedelta(hours=1))
    assert [e.grant_id for e in before_expiry.entries] == ["short"]
    after_expiry = move(w, "l2", "0", "4", {}, 1, at=T0 + timedelta(days=2))
    assert after_expiry.entries == ()  # short expired, later not yet effective
    much_later = move(w, "l3", "0", "4", {}, 1, at=T0 + timedelta(days=4))
    assert [e.grant_id for e in much_later.entries] == ["later"]


def test_a_falling_amount_returns_credit_last_drawn_first() -> None:
    w, _ = wallet(grant("a", "10", priority=1), grant("b", "10", priority=2))
    up = move(w, "seats", "0", "15", {}, 1)
    down = move(w, "seats", "15", "7", up.credits_by_grant, 2)
    assert [(e.entry_type, e.grant_id, e.amount) for e in down.entries] == [
        (EntryType.ADJUSTMENT, "b", D(5)),
        (EntryType.ADJUSTMENT, "a", D(3)),
    ]
    assert down.credits_by_grant == {"a": D(7)}
    assert w.remaining == {"a": D(3), "b": D(10)}


def test_a_fall_that_still_covers_the_credit_returns_nothing() -> None:
    w, _ = wallet(grant("a", "5"))
    up = move(w, "l", "0", "20", {}, 1)  # 5 from credit, 15 due
    down = move(w, "l", "20", "12", up.credits_by_grant, 2)
    assert down.entries == () and down.credits_applied == D(5)


def test_credit_returned_to_an_expired_grant_expires_again() -> None:
    w, _ = wallet(grant("a", "10", expires_in_days=1))
    up = move(w, "l", "0", "6", {}, 1)
    expiry = expire_grants(w, T0 + timedelta(days=2))
    assert [(e.idempotency_key, e.amount) for e in expiry] == [("expiry:a", D(-4))]
    assert expire_grants(w, T0 + timedelta(days=3)) == []  # once
    down = move(w, "l", "6", "0", up.credits_by_grant, 2)
    assert [(e.entry_type, e.amount) for e in down.entries] == [
        (EntryType.ADJUSTMENT, D(6)),
        (EntryType.EXPIRY, D(-6)),
    ]
    assert w.balance == 0


def test_depletion_after_a_new_grant_is_a_new_depletion() -> None:
    w, _ = wallet(grant("a", "10"))
    first = move(w, "l", "0", "10", {}, 1)
    assert first.depletion is not None and first.depletion.sequence == 1
    w.add_grant(grant("b", "10", granted_at=T0 + timedelta(days=1)))
    second = move(w, "l", "10", "30", first.credits_by_grant, 2)
    assert second.depletion is not None and second.depletion.sequence == 2


def test_no_wallet_means_nothing_is_drawn() -> None:
    change = change_line_amount(
        None,
        line_key="l",
        customer_id="c",
        old_amount=D(0),
        new_amount=D(9),
        credits_by_grant={},
        version=1,
        used_at=T0,
    )
    assert change.entries == () and change.credits_applied == 0


@pytest.mark.parametrize(
    ("amount", "field"),
    [("0", "amount"), ("-5", "amount"), ("1.001", "amount")],
)
def test_invalid_grants_are_refused(amount: str, field: str) -> None:
    with pytest.raises(GrantError) as caught:
        validate_grant(grant("g", amount))
    assert caught.value.field == field


def test_grant_that_expires_before_it_starts_is_refused() -> None:
    with pytest.raises(GrantError):
        validate_grant(grant("g", "5", expires_in_days=1, effective_at=T0 + timedelta(days=2)))


# -- property: whatever happens, balance = sum of entries --------------------------------------

money = st.decimals(min_value=0, max_value=D("500"), places=2)


@st.composite
def operations(draw: st.DrawFn) -> list[tuple]:
    ops: list[tuple] = []
    for index in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["grant", "usage", "usage", "usage", "expire"]))
        if kind == "grant":
            ops.append(
                (
                    "grant",
                    f"g{index}",
                    draw(st.decimals(min_value=D("0.01"), max_value=D("300"), places=2)),
                    draw(st.integers(0, 3)),
                    draw(st.one_of(st.none(), st.integers(1, 20))),
                )
            )
        elif kind == "usage":
            ops.append(
                ("usage", draw(st.sampled_from(["l1", "l2", "l3"])), draw(money), draw(st.integers(0, 20)))
            )
        else:
            ops.append(("expire", draw(st.integers(0, 25))))
    return ops


@settings(max_examples=300)
@given(operations())
def test_balance_always_equals_the_sum_of_entries(ops: list[tuple]) -> None:
    w = Wallet("acme", "USD")
    entries: list[Entry] = []
    lines: dict[str, tuple[D, dict[str, D], int]] = {}
    depletions = 0
    for op in ops:
        if op[0] == "grant":
            _, gid, amount, priority, days = op
            entries.append(
                w.add_grant(
                    Grant(
                        gid,
                        "acme",
                        "USD",
                        amount,
                        priority,
                        T0,
                        expires_at=None if days is None else T0 + timedelta(days=days),
                    )
                )
            )
        elif op[0] == "usage":
            _, line, amount, day = op
            old, by_grant, version = lines.get(line, (D(0), {}, 0))
            change = move(w, line, str(old), str(amount), by_grant, version + 1, at=T0 + timedelta(days=day))
            entries.extend(change.entries)
            lines[line] = (amount, change.credits_by_grant, version + 1)
            assert change.credits_applied <= amount
            if change.depletion:
                depletions += 1
                assert change.depletion.sequence == depletions
                assert w.balance == 0
        else:
            entries.extend(expire_grants(w, T0 + timedelta(days=op[1])))

        # the invariants, after every operation
        assert w.balance == sum((e.amount for e in entries), D(0))
        per_grant: dict[str, D] = defaultdict(D)
        for e in entries:
            per_grant[e.grant_id] += e.amount
        assert {g: a for g, a in per_grant.items()} == {g: w.remaining[g] for g in per_grant}
        assert all(amount >= 0 for amount in w.remaining.values())
        for line, (_, by_grant, _) in lines.items():
            used = -sum(
                (e.amount for e in entries if e.line_key == line and e.entry_type is not EntryType.EXPIRY),
                D(0),
            )
            assert used == sum(by_grant.values(), D(0))
        keys = Counter(e.idempotency_key for e in entries)
        assert max(keys.values(), default=1) == 1
