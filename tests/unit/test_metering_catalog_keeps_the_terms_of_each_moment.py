"""Metering's catalog view answers the terms in force at an event's time from dated snapshots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from metergate.domain.metering import millis
from metergate.domain.records import EntitlementSnapshot
from metergate_services.metering.catalog_view import CatalogView

pytestmark = pytest.mark.unit

NOW = datetime(2026, 5, 20, tzinfo=UTC)
UPGRADE = datetime(2026, 5, 15, tzinfo=UTC)
CANCEL = datetime(2026, 6, 1, tzinfo=UTC)


def snapshot(version: int, plan: str | None, valid_from=None, valid_to=None) -> EntitlementSnapshot:
    return EntitlementSnapshot(
        customer_id="acme",
        subscription_id=None if plan is None else f"sub-{plan}",
        plan_key=plan,
        version=version,
        valid_from=valid_from,
        valid_to=valid_to,
        updated_at=NOW,
    )


def view() -> CatalogView:
    return CatalogView({"bootstrap.servers": "127.0.0.1:9"}, "catalog.meters", "entitlements.snapshots")


def plan_at(catalog: CatalogView, moment: datetime) -> str | None:
    found = catalog.snapshot_at("acme", millis(moment))
    return None if found is None else found.plan_key


def test_undated_snapshots_keep_the_newest_version_for_every_moment():
    catalog = view()
    catalog.remember(snapshot(2, "growth"))
    catalog.remember(snapshot(1, "starter"))  # an older version read later loses
    assert plan_at(catalog, UPGRADE - timedelta(days=300)) == plan_at(catalog, NOW) == "growth"
    assert "acme" not in catalog.dated


def test_an_upgrade_and_a_cancellation_split_time_and_arrive_in_any_order():
    catalog = view()
    catalog.remember(snapshot(30, None, valid_from=CANCEL))  # nothing subscribed from the cancellation
    catalog.remember(snapshot(1, "growth"))  # the catalog file's terms: in force always
    catalog.remember(snapshot(20, "scale", valid_from=UPGRADE, valid_to=CANCEL))
    assert plan_at(catalog, UPGRADE - timedelta(milliseconds=1)) == "growth"
    assert plan_at(catalog, UPGRADE) == "scale"
    assert plan_at(catalog, CANCEL - timedelta(milliseconds=1)) == "scale"
    assert plan_at(catalog, CANCEL) is None
    assert catalog.snapshot("acme").version == 30  # the newest, for readers of "now"
    catalog.remember(snapshot(20, "scale", valid_from=UPGRADE, valid_to=CANCEL))  # read twice: kept once
    assert len(catalog.dated["acme"]) == 3
