"""Credit balances from `credits.balances`: the state keeps the highest ledger position per customer
and the check answers `credits_exhausted` from it where credits pay for usage."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metergate.domain.entitlements import Reason, Source
from metergate.domain.records import CreditBalance, Pricing, PricingModel
from metergate.entitlements.state import EntitlementState, Freshness
from metergate.wire.codec import codec
from tests.unit.test_entitlement_decisions import NOW, snapshot
from tests.unit.test_entitlement_state_pending_usage_and_checkpoint import agg

pytestmark = pytest.mark.unit

LIVE = Freshness(NOW, False, Source.LIVE, True)


def balance(amount: str, position: int) -> CreditBalance:
    return CreditBalance(
        customer_id="acme", currency="USD", balance=Decimal(amount), ledger_position=position, as_of=NOW
    )


def priced_state() -> EntitlementState:
    s = EntitlementState()
    snap = snapshot(pricing=Pricing(model=PricingModel.PER_UNIT, unit_price=Decimal("0.01")))
    s.apply_snapshot("acme", snap, codec(type(snap)).encode(snap))
    s.apply_aggregate(agg(50, 1))  # all 50 included units used
    return s


def test_highest_ledger_position_wins():
    s = EntitlementState()
    assert s.credit_balance("acme") is None
    assert s.apply_balance(balance("3.5", 7))
    assert not s.apply_balance(balance("100", 6))  # an older relay never rolls the balance back
    assert not s.apply_balance(balance("100", 7))  # the same position twice: first one stays
    assert s.credit_balance("acme") == Decimal("3.5")
    assert s.apply_balance(balance("-0.25", 8))
    assert s.credit_balance("acme") == Decimal("-0.25")


def test_check_answers_credits_exhausted_from_the_balance_and_ok_after_a_grant():
    s = priced_state()
    d = s.check("acme", "api_calls", Decimal(1), NOW, LIVE)
    assert (d.has_access, d.reason) == (True, Reason.OK)  # no balance known: credits not enforced
    s.apply_balance(balance("0", 10))
    d = s.check("acme", "api_calls", Decimal(1), NOW, LIVE)
    assert (d.has_access, d.reason) == (False, Reason.CREDITS_EXHAUSTED)
    assert "is 0" in d.message
    s.apply_balance(balance("5", 9))  # older position: ignored
    assert s.check("acme", "api_calls", Decimal(1), NOW, LIVE).reason is Reason.CREDITS_EXHAUSTED
    s.apply_balance(balance("0.01", 11))  # a new grant
    d = s.check("acme", "api_calls", Decimal(1), NOW, LIVE)
    assert (d.has_access, d.reason) == (True, Reason.OK)


def test_balance_round_trips_and_rejects_float():
    b = balance("-1.000000000001", 2**53 + 1)
    assert codec(CreditBalance).decode(codec(CreditBalance).encode(b)) == b
    with pytest.raises(ValueError, match="balance must be a Decimal"):
        CreditBalance(customer_id="a", currency="USD", balance=1.5, ledger_position=1, as_of=NOW)
