"""What the example enforcement service allows and blocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metergate.domain.enforcement import EnforcementState
from metergate.domain.records import (
    Enforcement,
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    LimitEvent,
    LimitKind,
    limit_event_id,
)

pytestmark = pytest.mark.unit

START = datetime(2026, 11, 1, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 15, tzinfo=UTC)


def snapshot(version: int = 1, enforcement: Enforcement = Enforcement.HARD) -> EntitlementSnapshot:
    return EntitlementSnapshot(
        customer_id="acme",
        plan_key="pro",
        plan_version=1,
        version=version,
        updated_at=START,
        features=(
            FeatureEntitlement(feature="sso", kind=FeatureKind.BOOLEAN),
            FeatureEntitlement(feature="beta", kind=FeatureKind.BOOLEAN, enabled=False),
            FeatureEntitlement(feature="retention_days", kind=FeatureKind.CONFIG, config_value="90"),
            FeatureEntitlement(
                feature="api_calls",
                kind=FeatureKind.METERED,
                meter="api_calls",
                limit=Decimal(100),
                enforcement=enforcement,
            ),
        ),
    )


def limit(kind: LimitKind, threshold: int | None = None, usage: int = 100) -> LimitEvent:
    return LimitEvent(
        limit_event_id=limit_event_id("acme", "api_calls", START, kind, threshold),
        kind=kind,
        customer_id="acme",
        feature="api_calls",
        meter="api_calls",
        period_start=START,
        period_end=END,
        threshold=threshold,
        usage=Decimal(usage),
        limit=Decimal(100),
        occurred_at=NOW,
    )


def test_unknown_customer_and_feature_are_denied():
    state = EnforcementState()
    assert not state.check("acme", "sso", NOW).allowed
    state.apply_snapshot(snapshot())
    assert not state.check("acme", "export", NOW).allowed
    assert not state.check("acme", "beta", NOW).allowed
    assert state.check("acme", "sso", NOW).allowed
    assert state.check("acme", "retention_days", NOW).config_value == "90"


def test_hard_limit_blocks_until_the_period_ends():
    state = EnforcementState()
    state.apply_snapshot(snapshot())
    state.apply_limit_event(limit(LimitKind.THRESHOLD_CROSSED, 80, usage=80))
    assert state.check("acme", "api_calls", NOW).allowed
    state.apply_limit_event(limit(LimitKind.LIMIT_REACHED))
    decision = state.check("acme", "api_calls", NOW)
    assert not decision.allowed and "hard limit of 100 reached" in decision.reason
    assert state.blocked(NOW) == [("acme", "api_calls")]
    assert state.check("acme", "api_calls", END + timedelta(seconds=1)).allowed
    assert state.blocked(END) == []


def test_soft_limit_only_warns():
    state = EnforcementState()
    state.apply_snapshot(snapshot(enforcement=Enforcement.SOFT))
    state.apply_limit_event(limit(LimitKind.LIMIT_REACHED))
    decision = state.check("acme", "api_calls", NOW)
    assert decision.allowed and "limit_reached" in decision.reason


def test_a_resent_limit_event_is_applied_once():
    state = EnforcementState()
    state.apply_snapshot(snapshot())
    assert state.apply_limit_event(limit(LimitKind.HARD_LIMIT_EXCEEDED, usage=101))
    assert not state.apply_limit_event(limit(LimitKind.HARD_LIMIT_EXCEEDED, usage=101))
    assert len(state.received) == 1


def test_older_snapshot_does_not_replace_newer():
    state = EnforcementState()
    state.apply_snapshot(snapshot(version=3, enforcement=Enforcement.SOFT))
    state.apply_snapshot(snapshot(version=2, enforcement=Enforcement.HARD))
    assert state.snapshots["acme"].version == 3


def test_limit_event_before_snapshot_still_blocks():
    state = EnforcementState()
    state.apply_limit_event(limit(LimitKind.LIMIT_REACHED))
    assert not state.check("acme", "api_calls", NOW).allowed  # no snapshot yet: denied anyway
    state.apply_snapshot(snapshot())
    assert not state.check("acme", "api_calls", NOW).allowed
    assert state.blocked(NOW) == [("acme", "api_calls")]
