"""The terms in force at an event's time, from dated snapshots read in any order (what metering's
terms view and rating's snapshot cache both apply: `metergate.domain.terms.DatedTerms`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from metergate.domain.metering import millis
from metergate.domain.records import EntitlementSnapshot
from metergate.domain.terms import DatedTerms

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


def plan_at(terms: DatedTerms, moment: datetime) -> str | None:
    found = terms.at("acme", millis(moment))
    return None if found is None else found.plan_key


def test_undated_snapshots_keep_the_newest_version_for_every_moment():
    terms = DatedTerms()
    terms.remember(snapshot(2, "growth"))
    terms.remember(snapshot(1, "starter"))  # an older version read later loses
    assert plan_at(terms, UPGRADE - timedelta(days=300)) == plan_at(terms, NOW) == "growth"
    assert "acme" not in terms.dated


def test_an_upgrade_and_a_cancellation_split_time_and_arrive_in_any_order():
    terms = DatedTerms()
    terms.remember(snapshot(30, None, valid_from=CANCEL))  # nothing subscribed from the cancellation
    terms.remember(snapshot(1, "growth"))  # the terms file's terms: in force always
    terms.remember(snapshot(20, "scale", valid_from=UPGRADE, valid_to=CANCEL))
    assert plan_at(terms, UPGRADE - timedelta(milliseconds=1)) == "growth"
    assert plan_at(terms, UPGRADE) == "scale"
    assert plan_at(terms, CANCEL - timedelta(milliseconds=1)) == "scale"
    assert plan_at(terms, CANCEL) is None
    assert terms.newest("acme").version == 30  # the newest, for readers of "now"
    terms.remember(snapshot(20, "scale", valid_from=UPGRADE, valid_to=CANCEL))  # read twice: kept once
    assert len(terms.dated["acme"]) == 3
    assert [s.version for s in terms.of("acme")] == [30, 20, 1]  # what a period is cut by


def test_a_tombstone_forgets_every_snapshot_of_the_customer():
    terms = DatedTerms()
    terms.remember(snapshot(20, "scale", valid_from=UPGRADE))
    assert terms.of("acme") != ()
    terms.forget("acme")
    assert terms.of("acme") == () and terms.newest("acme") is None and plan_at(terms, NOW) is None


def test_terms_re_sent_with_an_end_replace_their_open_copy():
    # Scale from the 15th, open; a change then closes it on 1 June (re-sent, a higher version)
    # before the terms that follow are due: after 1 June nothing is in force yet, not the open copy
    terms = DatedTerms()
    terms.remember(snapshot(20, "scale", valid_from=UPGRADE))
    terms.remember(snapshot(25, "scale", valid_from=UPGRADE, valid_to=CANCEL))
    assert plan_at(terms, CANCEL - timedelta(milliseconds=1)) == "scale"
    assert plan_at(terms, CANCEL) is None
    terms.remember(snapshot(20, "scale", valid_from=UPGRADE))  # the old copy read again later
    assert plan_at(terms, CANCEL) is None and [s.version for s in terms.of("acme")] == [25]
