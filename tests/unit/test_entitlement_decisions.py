"""What the entitlement check answers, at every boundary of the rule (pure, injected `now`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metergate.domain.entitlements import Decision, Reason, Source, check, fallback, requested
from metergate.domain.periods import Period
from metergate.domain.records import (
    Enforcement,
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    Pricing,
    PricingModel,
    ResetPeriod,
)
from metergate.errors import InvalidInput

pytestmark = pytest.mark.unit

ANCHOR = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
# the period of NOW for an anchor of the 15th at 12:00, monthly
START = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
END = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)


def snapshot(**metered: object) -> EntitlementSnapshot:
    api = {
        "feature": "api_calls",
        "kind": FeatureKind.METERED,
        "meter": "requests",
        "included": Decimal(50),
        "limit": Decimal(100),
        "enforcement": Enforcement.HARD,
        **metered,
    }
    return EntitlementSnapshot(
        customer_id="acme",
        subscription_id="sub-1",
        plan_key="pro",
        plan_version=2,
        billing_anchor=ANCHOR,
        reset_period=ResetPeriod.MONTHLY,
        updated_at=ANCHOR,
        features=(
            FeatureEntitlement(feature="sso", kind=FeatureKind.BOOLEAN),
            FeatureEntitlement(feature="beta", kind=FeatureKind.BOOLEAN, enabled=False),
            FeatureEntitlement(feature="retention_days", kind=FeatureKind.CONFIG, config_value="90"),
            FeatureEntitlement.model_validate(api),
        ),
    )


def usage_of(figures: dict[tuple[str, datetime], Decimal]):
    def lookup(meter: str, period: Period) -> Decimal:
        return figures.get((meter, period.start), Decimal(0))

    return lookup


def decide(
    used: str, units: str = "1", now: datetime = NOW, snap: EntitlementSnapshot | None = None, **kw
) -> Decision:
    return check(
        snap or snapshot(),
        "acme",
        "api_calls",
        now=now,
        usage=usage_of({("requests", START): Decimal(used)}),
        requested_units=Decimal(units),
        **kw,
    )


def test_no_snapshot_is_no_subscription():
    d = check(None, "globex", "sso", now=NOW, usage=usage_of({}))
    assert (d.has_access, d.reason, d.customer_id, d.feature) == (
        False,
        Reason.NO_SUBSCRIPTION,
        "globex",
        "sso",
    )
    assert d.message == "no subscription known for customer 'globex'"


def test_unknown_and_disabled_features_are_denied():
    d = check(snapshot(), "acme", "nope", now=NOW, usage=usage_of({}))
    assert (d.has_access, d.reason) == (False, Reason.UNKNOWN_FEATURE)
    d = check(snapshot(), "acme", "beta", now=NOW, usage=usage_of({}))
    assert (d.has_access, d.reason, d.kind) == (False, Reason.DISABLED, FeatureKind.BOOLEAN)


def test_boolean_and_config_features_are_allowed_with_their_value():
    d = check(snapshot(), "acme", "sso", now=NOW, usage=usage_of({}))
    assert (d.has_access, d.reason, d.config_value, d.usage) == (True, Reason.OK, None, None)
    d = check(snapshot(), "acme", "retention_days", now=NOW, usage=usage_of({}))
    assert (d.has_access, d.reason, d.kind, d.config_value) == (True, Reason.OK, FeatureKind.CONFIG, "90")


def test_hard_limit_allows_a_request_that_ends_exactly_at_the_limit():
    d = decide("99", "1")
    assert (d.has_access, d.reason) == (True, Reason.OK)
    assert (d.usage, d.limit, d.remaining, d.overage_units, d.included) == (
        Decimal(99),
        Decimal(100),
        Decimal(1),
        Decimal(0),
        Decimal(50),
    )
    assert (d.period_start, d.period_end) == (START, END)


def test_hard_limit_denies_one_over():
    d = decide("100", "1")
    assert (d.has_access, d.reason, d.remaining, d.overage_units) == (
        False,
        Reason.LIMIT_EXCEEDED,
        Decimal(0),
        Decimal(1),
    )
    assert (
        d.message == "hard limit of 100 for 'api_calls' reached (usage 100) until 2026-12-15T12:00:00+00:00"
    )


def test_hard_limit_denies_a_request_that_would_cross_and_allows_a_smaller_one():
    d = decide("95", "6")
    assert (d.has_access, d.reason, d.remaining, d.overage_units) == (
        False,
        Reason.WOULD_EXCEED,
        Decimal(5),
        Decimal(1),
    )
    assert d.message == "6 more would exceed the hard limit of 100 for 'api_calls' (usage 95, 5 remaining)"
    d = decide("95", "5")
    assert (d.has_access, d.reason, d.remaining) == (True, Reason.OK, Decimal(5))


def test_fractional_quantities_stay_exact():
    d = decide("99.999999999", "0.000000001")
    assert (d.has_access, d.remaining) == (True, Decimal("0.000000001"))
    d = decide("99.999999999", "0.000000002")
    assert (d.has_access, d.reason, d.overage_units) == (False, Reason.WOULD_EXCEED, Decimal("0.000000001"))


def test_zero_requested_is_allowed_at_the_limit_and_denied_past_it():
    d = decide("100", "0")
    assert (d.has_access, d.reason, d.remaining, d.requested_units) == (
        True,
        Reason.OK,
        Decimal(0),
        Decimal(0),
    )
    d = decide("101", "0")
    assert (d.has_access, d.reason, d.overage_units) == (False, Reason.LIMIT_EXCEEDED, Decimal(1))


def test_soft_limit_allows_and_reports_the_overage():
    snap = snapshot(enforcement=Enforcement.SOFT)
    d = decide("100", "1", snap=snap)
    assert (d.has_access, d.reason, d.overage_units, d.remaining) == (
        True,
        Reason.SOFT_LIMIT_EXCEEDED,
        Decimal(1),
        Decimal(0),
    )
    assert d.enforcement is Enforcement.SOFT
    d = decide("90", "10", snap=snap)
    assert (d.has_access, d.reason, d.overage_units) == (True, Reason.OK, Decimal(0))


def test_unlimited_allows_any_amount():
    d = decide("1000000000", "1000000000", snap=snapshot(limit=None))
    assert (d.has_access, d.reason, d.limit, d.remaining, d.overage_units) == (
        True,
        Reason.OK,
        None,
        None,
        Decimal(0),
    )


def test_enforcement_none_only_reports_the_limit():
    d = decide("150", "1", snap=snapshot(enforcement=Enforcement.NONE))
    assert (d.has_access, d.reason, d.overage_units) == (True, Reason.OK, Decimal(51))


def test_a_period_that_just_rolled_over_starts_from_zero():
    # usage of 100 in the period that ended at END; one millisecond later a new period begins
    figures = {("requests", START): Decimal(100)}
    last_ms = END - timedelta(milliseconds=1)
    d = check(snapshot(), "acme", "api_calls", now=last_ms, usage=usage_of(figures))
    assert (d.has_access, d.reason, d.period_end) == (False, Reason.LIMIT_EXCEEDED, END)
    d = check(snapshot(), "acme", "api_calls", now=END, usage=usage_of(figures))
    assert (d.has_access, d.reason, d.usage, d.remaining) == (True, Reason.OK, Decimal(0), Decimal(100))
    assert (d.period_start, d.period_end) == (END, datetime(2027, 1, 15, 12, 0, tzinfo=UTC))


def test_without_an_anchor_the_period_is_the_calendar_month():
    snap = snapshot().model_copy(update={"billing_anchor": None})
    d = check(snap, "acme", "api_calls", now=NOW, usage=usage_of({}))
    assert (d.period_start, d.period_end) == (
        datetime(2026, 11, 1, tzinfo=UTC),
        datetime(2026, 12, 1, tzinfo=UTC),
    )


def test_credits_exhausted_denies_usage_beyond_the_included_units():
    priced = snapshot(pricing=Pricing(model=PricingModel.PER_UNIT, unit_price=Decimal("0.01")))
    d = decide("50", "1", snap=priced, credit_balance=Decimal(0))
    assert (d.has_access, d.reason) == (False, Reason.CREDITS_EXHAUSTED)
    # within the included units, credit is not needed
    d = decide("49", "1", snap=priced, credit_balance=Decimal(0))
    assert (d.has_access, d.reason) == (True, Reason.OK)
    d = decide("50", "1", snap=priced, credit_balance=Decimal("0.01"))
    assert (d.has_access, d.reason) == (True, Reason.OK)
    # an unpriced feature never needs credit
    d = decide("50", "1", credit_balance=Decimal(0))
    assert (d.has_access, d.reason) == (True, Reason.OK)


def test_fallback_rules_per_feature_and_default():
    d = fallback("new", "sso", {"sso": True, "*": False})
    assert d is not None and (d.has_access, d.source, d.reason) == (True, Source.FALLBACK, Reason.OK)
    d = fallback("new", "api_calls", {"sso": True, "*": False})
    assert d is not None and (d.has_access, d.source) == (False, Source.FALLBACK)
    assert fallback("new", "api_calls", {"sso": True}) is None


def test_requested_units_validation_names_the_field():
    assert requested("2.5") == Decimal("2.5")
    assert requested(3) == Decimal(3)
    for bad, text in (
        (-1, "requested_units must be >= 0, got -1"),
        (1.5, "requested_units must be a Decimal, int or numeric string, not float (1.5)"),
        ("abc", "requested_units must be a number, got 'abc'"),
        (True, "requested_units must be a number, got a boolean"),
    ):
        with pytest.raises(InvalidInput) as error:
            requested(bad)
        assert str(error.value) == text
        assert error.value.field == "requested_units"


def test_decision_json_keeps_decimals_exact():
    body = decide("99.5", "0.5").to_json()
    assert body["usage"] == "99.5" and body["remaining"] == "0.5" and body["requested_units"] == "0.5"
    assert body["reason"] == "ok" and body["source"] == "live" and body["kind"] == "metered"
    assert body["period_start"] == "2026-11-15T12:00:00+00:00"
