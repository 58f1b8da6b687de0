"""A batch keeps every version of customers with credit and the newest version of every other key;
the line cache hands out copies, forgets revoked partitions and stays bounded."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import pytest

from metergate.domain.pricing import ChargeStatus, ChargeType
from metergate.domain.rating import Line, newest_per_key
from metergate_services.rating.line_cache import LineCache
from tests.unit.test_rating_fold import P0, P1, aggregate

pytestmark = pytest.mark.unit


def versions(records: list[tuple[Any, Any]]) -> list[tuple[str, str, int]]:
    return [(a.customer_id, a.meter, a.version) for _, a in records]


def test_only_customers_without_credit_collapse_to_their_newest_version() -> None:
    records = [
        (None, aggregate("plain", "10", 1)),
        (None, aggregate("credit", "10", 1)),
        (None, aggregate("plain", "30", 3)),
        (None, aggregate("plain", "20", 2)),  # older, arriving after a newer one
        (None, aggregate("credit", "20", 2)),
        (None, aggregate("plain", "5", 1, meter="storage")),
    ]
    kept = newest_per_key(records, with_credit={"credit"})
    assert versions(kept) == [
        ("credit", "api_calls", 1),
        ("plain", "api_calls", 3),
        ("credit", "api_calls", 2),
        ("plain", "storage", 1),
    ]
    assert newest_per_key(records[:2], with_credit=set()) == records[:2]  # nothing to collapse


def line(key: str, amount: str) -> Line:
    return Line(
        line_key=f"{key}|line",
        aggregate_key=key,
        customer_id="c",
        subscription_id="s",
        plan_key=None,
        plan_version=None,
        feature="api_calls",
        meter="api_calls",
        charge=ChargeType.USAGE,
        status=ChargeStatus.RATED,
        unpriced_reason=None,
        period_start=P0,
        period_end=P1,
        currency="USD",
        quantity=D(1),
        included_quantity=D(0),
        billable_quantity=D(1),
        pricing_model="per_unit",
        unit_price=D(1),
        amount=D(amount),
        credits_applied=D(0),
        detail="",
        aggregate_version=1,
        snapshot_version=1,
        event_count=1,
        last_event_id="e",
        last_event_at=P0,
    )


def test_line_cache_hands_out_copies_forgets_revoked_partitions_and_stays_bounded() -> None:
    cache = LineCache(max_keys=2)
    cache.store({"k1": 0, "k2": 1}, {"k1": {"k1|line": line("k1", "1")}, "k2": {}}, {"k1|line": {"g": D(1)}})
    lines, credits, missing = cache.take(["k1", "k2", "k3"])
    assert (set(lines), credits, missing) == ({"k1", "k2"}, {"k1|line": {"g": D(1)}}, {"k3"})
    lines["k1"]["k1|line"] = line("k1", "99")  # the fold changes its copy, not the cache
    assert cache.take(["k1"])[0]["k1"]["k1|line"].amount == D(1)

    # recency is that of the commits that stored a key (a key taken is stored again when its batch
    # commits): k1 committed again, then k3, so k2 is the least recently committed: evicted
    cache.store({"k1": 0}, {"k1": {"k1|line": line("k1", "1")}}, {"k1|line": {"g": D(1)}})
    cache.store({"k3": 1}, {"k3": {}}, {})
    assert cache.take(["k1", "k2", "k3"])[2] == {"k2"}
    cache.drop_partitions([1])
    assert cache.take(["k1", "k3"])[2] == {"k3"}
    cache.clear()
    assert len(cache) == 0
