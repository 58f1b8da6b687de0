"""Local state of the entitlement check: highest versions win, pending usage leaves exactly when an
aggregate covering its offset arrives (never counted twice, never a gap), the checkpoint round-trips."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from metergate.domain.entitlements import Reason, Source
from metergate.domain.partitioning import partition_for
from metergate.domain.periods import Period
from metergate.domain.records import Aggregation, LimitEvent, LimitKind, UsageAggregate
from metergate.entitlements import checkpoint
from metergate.entitlements.keys import KeyStore
from metergate.entitlements.service import canonical_partition
from metergate.entitlements.state import EntitlementState, Freshness, PendingUsage
from metergate.wire.codec import codec
from tests.unit.test_entitlement_decisions import END, NOW, START, snapshot

pytestmark = pytest.mark.unit

PERIOD = Period(START, END)
LIVE = Freshness(NOW, False, Source.LIVE, True)


def agg(value: int, version: int, start: datetime = START) -> UsageAggregate:
    return UsageAggregate(
        customer_id="acme",
        meter="requests",
        aggregation=Aggregation.SUM,
        period_start=start,
        period_end=END,
        value=Decimal(value),
        event_count=1,
        version=version,
        last_event_at=start,
        last_event_id="e",
        updated_at=start,
    )


def pending(event_id: str, offset: int, quantity: int = 1) -> PendingUsage:
    return PendingUsage(event_id, 2, offset, Decimal(quantity), END)


def state() -> EntitlementState:
    s = EntitlementState()
    snap = snapshot()
    s.apply_snapshot("acme", snap, codec(type(snap)).encode(snap))
    return s


def usage(s: EntitlementState) -> Decimal:
    return s.usage("acme", "requests", PERIOD, "api_calls")


def test_highest_snapshot_and_aggregate_versions_win():
    s = state()
    older = snapshot().model_copy(update={"version": 0, "plan_key": "old"})
    assert s.apply_snapshot("acme", older, None) is False and s.snapshots["acme"].plan_key == "pro"
    assert (
        s.apply_aggregate(agg(10, 5))
        and not s.apply_aggregate(agg(7, 4))
        and not s.apply_aggregate(agg(10, 5))
    )
    assert usage(s) == 10
    s.apply_snapshot("acme", None, None)  # tombstone
    assert "acme" not in s.snapshots


def test_pending_usage_leaves_exactly_when_an_aggregate_covers_its_offset():
    s = state()
    s.apply_aggregate(agg(40, 10))  # events up to offset 9 folded
    assert s.add_pending("acme", "requests", PERIOD, pending("a", 10, 3))
    assert s.add_pending("acme", "requests", PERIOD, pending("b", 11, 4))
    assert usage(s) == 47
    s.apply_aggregate(agg(43, 11))  # includes offset 10 (a) but not 11 (b)
    assert usage(s) == 47 and [p.event_id for p in s.pending[("acme", "requests", START)]] == ["b"]
    s.apply_aggregate(agg(47, 12))
    assert usage(s) == 47 and s.pending == {} and s.pending_totals == {}


def test_a_delivery_report_after_its_aggregate_is_not_counted_again():
    s = state()
    s.apply_aggregate(agg(43, 11))  # metering was faster than the delivery report of offset 10
    assert s.add_pending("acme", "requests", PERIOD, pending("a", 10, 3)) is False
    assert usage(s) == 43
    assert s.was_reported("a") and s.add_pending("acme", "requests", PERIOD, pending("a", 12, 3)) is False


def test_limit_event_usage_is_a_floor_and_decisions_use_it():
    s = state()
    s.apply_aggregate(agg(90, 5))
    s.apply_limit(
        LimitEvent(
            limit_event_id="x",
            kind=LimitKind.LIMIT_REACHED,
            customer_id="acme",
            feature="api_calls",
            period_start=START,
            period_end=END,
            usage=Decimal(100),
            occurred_at=NOW,
        )
    )
    assert usage(s) == 100
    decision = s.check("acme", "api_calls", Decimal(1), NOW, LIVE)
    assert (decision.has_access, decision.reason) == (False, Reason.LIMIT_EXCEEDED)


def test_fallback_answers_only_when_the_state_cannot_be_trusted():
    s = state()
    s.fallback = {"api_calls": True}
    assert s.check("new", "api_calls", Decimal(1), NOW, LIVE).reason is Reason.NO_SUBSCRIPTION
    for fresh in (Freshness(NOW, True, Source.LIVE, True), Freshness(NOW, True, Source.CACHE, True)):
        d = s.check("new", "api_calls", Decimal(1), NOW, fresh)
        assert (d.has_access, d.source, d.stale) == (True, Source.FALLBACK, True)
    assert (
        s.check("new", "sso", Decimal(1), NOW, Freshness(None, True, Source.LIVE, False)).reason
        is Reason.NO_SUBSCRIPTION
    )


def test_expired_periods_drop_their_pending_usage():
    s = state()
    s.add_pending("acme", "requests", PERIOD, pending("a", 0))
    assert s.expire_pending(END - timedelta(milliseconds=1)) == 0
    assert s.expire_pending(END) == 1 and s.pending == {}


def test_checkpoint_round_trips_the_state(tmp_path):
    s = state()
    s.apply_aggregate(agg(40, 10))
    s.add_pending("acme", "requests", PERIOD, pending("a", 10, 3))
    path = tmp_path / "checkpoint.json"
    checkpoint.write(path, checkpoint.dump(s, NOW))
    assert path.stat().st_mode & 0o777 == 0o600
    restored = EntitlementState()
    assert checkpoint.load(path, restored) == NOW
    assert restored.snapshots == s.snapshots and restored.aggregates == s.aggregates
    assert usage(restored) == 43 and restored.was_reported("a")
    assert checkpoint.load(tmp_path / "missing.json", EntitlementState()) is None
    (tmp_path / "bad.json").write_text("{not json")
    assert checkpoint.load(tmp_path / "bad.json", EntitlementState()) is None


def test_canonical_partition_is_the_one_metering_counts_on():
    # the vectors of Kafka's UtilsTest: murmur2("21") = -973932308, toPositive % n
    assert canonical_partition("21", 1_000_000_000) == (-973932308 & 0x7FFFFFFF) % 1_000_000_000
    for customer in ("acme", "globex", "initech", "ü-customer"):
        assert canonical_partition(customer, 4) == partition_for(customer, 4)
        assert canonical_partition(customer, 1) == 0


def test_keys_are_stored_hashed_scoped_bound_and_revocable(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    key, plaintext = store.create("app", ["check"], ["acme"])
    assert plaintext not in (tmp_path / "keys.json").read_text()
    assert plaintext.split("_")[2] not in repr(key) and "secret" not in repr(key)
    found = store.authenticate(plaintext)
    assert found is not None and found.allows("check") and not found.allows("ingest")
    assert found.sees("acme") and not found.sees("globex")
    assert store.authenticate(plaintext[:-1] + ("0" if plaintext[-1] != "0" else "1")) is None
    assert store.authenticate("mgk_nope_x") is None and store.authenticate(None) is None
    admin = store.create("ops", ["admin"])[1]
    assert store.authenticate(admin).allows("ingest")  # type: ignore[union-attr]
    store.revoke("app")
    fresh = KeyStore(tmp_path / "keys.json")
    assert fresh.authenticate(plaintext) is None and fresh.authenticate(admin) is not None
    with pytest.raises(Exception, match="'bogus' is not a scope"):
        store.create("x", ["bogus"])
