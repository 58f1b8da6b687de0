"""Checks keep answering while the broker is paused (SIGSTOP): the same figures from the last known
state, marked `stale: true` with the `as_of` of the last moment the state was known current; once
the broker answers again, decisions are live and fresh again. In-process `Entitlements`."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metergate.domain.entitlements import Reason, Source
from metergate.domain.periods import period_for
from metergate.domain.records import (
    Enforcement,
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    ResetPeriod,
)
from metergate.entitlements import Entitlements, EntitlementsSettings
from metergate.kafka.admin import ensure_topics
from metergate.kafka.topics import Topics
from metergate.settings import KafkaSettings
from metergate.testing.waiting import wait_until
from tests.integration.entitlements_support import (
    PausableBroker,
    aggregate,
    publish_aggregates,
    publish_snapshots,
)

pytestmark = pytest.mark.integration


def snapshot(customer: str, anchor: datetime) -> EntitlementSnapshot:
    return EntitlementSnapshot(
        customer_id=customer,
        subscription_id=f"{customer}-sub",
        plan_key="pro",
        plan_version=1,
        billing_anchor=anchor,
        reset_period=ResetPeriod.DAILY,
        updated_at=anchor,
        features=(
            FeatureEntitlement(
                feature="api_calls",
                kind=FeatureKind.METERED,
                meter="api_calls",
                limit=Decimal(100),
                enforcement=Enforcement.HARD,
            ),
        ),
    )


def test_checks_answer_from_the_last_known_state_while_the_broker_is_paused(tmp_path):
    with PausableBroker(tmp_path / "broker") as broker:
        config = {"bootstrap.servers": broker.bootstrap}
        topics = Topics("paused.")
        ensure_topics(config, topics, 4)
        now = datetime.now(UTC)
        anchor = now - timedelta(hours=1)
        period = period_for(now, anchor, ResetPeriod.DAILY)
        publish_snapshots(config, topics, snapshot("acme", anchor))
        publish_aggregates(
            config, topics, aggregate("acme", "api_calls", period.start, period.end, 97, version=40)
        )
        settings = EntitlementsSettings(
            kafka=KafkaSettings(bootstrap=broker.bootstrap, topic_prefix=topics.prefix),
            checkpoint_path=None,
            stale_after_s=1.0,
        )
        with Entitlements(settings) as entitlements:
            assert entitlements.wait_caught_up(30)
            wait_until(
                lambda: entitlements.check("acme", "api_calls", 0).usage == 97,
                "aggregate applied",
                timeout_s=10,
                every_s=0.02,
            )
            live = entitlements.check("acme", "api_calls", 4)
            assert (live.has_access, live.reason, live.stale, live.source) == (
                False,
                Reason.WOULD_EXCEED,
                False,
                Source.LIVE,
            )

            broker.pause()
            paused_at = datetime.now(UTC)
            stale = wait_until(
                lambda: (d := entitlements.check("acme", "api_calls", 4)).stale and d,
                "stale marking",
                timeout_s=15,
                every_s=0.02,
            )
            assert (stale.has_access, stale.reason, stale.usage, stale.remaining) == (
                False,
                Reason.WOULD_EXCEED,
                Decimal(97),
                Decimal(3),
            )
            assert stale.source is Source.LIVE and stale.as_of is not None and stale.as_of <= paused_at
            # many checks while paused: all answered at once, from memory
            started = time.perf_counter()
            answers = [entitlements.check("acme", "api_calls", 3) for _ in range(1000)]
            assert time.perf_counter() - started < 1.0
            assert {(d.has_access, d.stale, d.as_of) for d in answers} == {(True, True, stale.as_of)}

            broker.resume()
            fresh = wait_until(
                lambda: not (d := entitlements.check("acme", "api_calls", 3)).stale and d,
                "fresh again",
                timeout_s=30,
                every_s=0.02,
            )
            assert fresh.as_of is not None and fresh.as_of > paused_at
            assert (fresh.has_access, fresh.usage) == (True, Decimal(97))
