"""The state's fast path (views built when a snapshot arrives, the period cached as two floats, the
explanation formatted when read) answers exactly what the pure rule answers, field by field, at
every boundary, in the period of the moment asked for (also one that rolled over since the
snapshot arrived)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from metergate.domain.entitlements import Reason, Source, check
from metergate.domain.periods import Period
from metergate.domain.records import CreditBalance, Enforcement, Pricing, PricingModel
from metergate.entitlements.state import EntitlementState, Freshness
from tests.unit.test_entitlement_decisions import END, NOW, START, snapshot
from tests.unit.test_entitlement_state_pending_usage_and_checkpoint import agg

pytestmark = pytest.mark.unit

LIVE = Freshness(NOW, False, Source.LIVE, True)
FEATURES = ("api_calls", "sso", "beta", "retention_days", "nope")
PER_UNIT = Pricing(model=PricingModel.PER_UNIT, unit_price=Decimal("0.01"))


def state_at(snap, used: Decimal | None, clock_s: float) -> EntitlementState:
    s = EntitlementState(clock=lambda: clock_s)
    s.apply_snapshot("acme", snap, None)
    if used is not None:
        a = agg(0, 7)
        s.apply_aggregate(a.model_copy(update={"value": used}))
    return s


@pytest.mark.parametrize("enforcement", [Enforcement.HARD, Enforcement.SOFT, Enforcement.NONE])
@pytest.mark.parametrize("used", ["0", "49", "50", "99", "99.5", "100", "101"])
@pytest.mark.parametrize("units", ["0", "0.5", "1", "2", "51"])
def test_every_feature_answers_as_the_rule(enforcement, used, units):
    snap = snapshot(enforcement=enforcement)
    s = state_at(snap, Decimal(used), NOW.timestamp())
    for feature in FEATURES:
        fast = s.check("acme", feature, Decimal(units), NOW, LIVE)
        rule = check(
            snap,
            "acme",
            feature,
            now=NOW,
            usage=lambda meter, period: Decimal(used) if (meter, period.start) == ("requests", START) else 0,
            requested_units=Decimal(units),
            as_of=NOW,
        )
        assert fast == rule, feature
        assert fast.message == rule.message and fast.message, feature


def test_credit_rule_answers_as_the_rule():
    snap = snapshot(pricing=PER_UNIT)
    s = state_at(snap, Decimal(60), NOW.timestamp())
    s.apply_balance(
        CreditBalance(customer_id="acme", currency="USD", balance=Decimal(0), ledger_position=3, as_of=NOW)
    )
    fast = s.check("acme", "api_calls", Decimal(1), NOW, LIVE)
    rule = check(
        snap,
        "acme",
        "api_calls",
        now=NOW,
        usage=lambda meter, period: Decimal(60),
        requested_units=Decimal(1),
        credit_balance=Decimal(0),
        as_of=NOW,
    )
    assert fast.reason is Reason.CREDITS_EXHAUSTED
    assert fast == rule
    assert fast.message == (
        "credit balance of customer 'acme' is 0: usage of 'api_calls' beyond the 50 included units needs credit"
    )


def test_a_period_that_rolled_over_since_the_snapshot_arrived_starts_from_zero():
    s = state_at(snapshot(), Decimal(100), (END - timedelta(seconds=1)).timestamp())
    before = s.check("acme", "api_calls", Decimal(1), END - timedelta(microseconds=1), LIVE)
    assert (before.reason, before.usage, before.period_end) == (Reason.LIMIT_EXCEEDED, Decimal(100), END)
    after = s.check("acme", "api_calls", Decimal(1), END, LIVE)
    # the next monthly period of an anchor on the 15th at 12:00
    nxt = Period(END, END.replace(year=2027, month=1))
    assert (after.reason, after.usage, after.remaining) == (Reason.OK, Decimal(0), Decimal(100))
    assert (after.period_start, after.period_end) == (nxt.start, nxt.end)
    # and a check for a moment of the earlier period still reads that period's usage
    again = s.check("acme", "api_calls", Decimal(1), START, LIVE)
    assert (again.usage, again.period_start) == (Decimal(100), START)


def test_a_new_snapshot_replaces_the_view():
    s = state_at(snapshot(), Decimal(100), NOW.timestamp())
    assert s.check("acme", "api_calls", Decimal(1), NOW, LIVE).reason is Reason.LIMIT_EXCEEDED
    raised = snapshot(limit=Decimal(200)).model_copy(update={"version": 2})
    assert s.apply_snapshot("acme", raised, None)
    d = s.check("acme", "api_calls", Decimal(1), NOW, LIVE)
    assert (d.reason, d.limit, d.remaining) == (Reason.OK, Decimal(200), Decimal(100))
    s.apply_snapshot("acme", None, None)  # tombstone
    assert s.check("acme", "api_calls", Decimal(1), NOW, LIVE).reason is Reason.NO_SUBSCRIPTION
