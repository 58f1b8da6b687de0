"""The demo's whole pipeline: every service as a real process; its report checks pass, and each
service's Prometheus counters agree with what was sent; stopping leaves no process behind."""

from __future__ import annotations

import io
from collections import Counter

import pytest

from metergate.demo.run import Demo
from metergate.demo.scenario import build_scenario
from metergate.domain.records import now_utc
from metergate.embedded.services import metric_sum
from metergate.testing.processes import alive

pytestmark = pytest.mark.e2e


def test_demo_end_to_end(tmp_path):
    out = io.StringIO()
    demo = Demo(tmp_path / "demo", out=out, progress=False)
    pids: list[int] = []
    try:
        demo.start()
        result = demo.run()
        report = out.getvalue()
        assert result.ok, report
        pids = [s.pid for s in demo.services.values() if s.pid] + [
            pid for pid in (demo.info.broker_pid, demo.info.postgres_pid) if pid
        ]

        scenario = build_scenario(now_utc())  # same seed: the same mix the demo sent
        metering = demo.services["metering"].metrics()
        assert metric_sum(metering, "metergate_events_consumed_total") == scenario.records_sent
        assert metric_sum(metering, "metergate_events_accepted_total") == len(scenario.distinct())
        assert metric_sum(metering, "metergate_events_duplicate_total") == scenario.duplicates
        rejected = {
            key.split('reason="')[1].rstrip('"}'): value
            for key, value in metering.items()
            if key.startswith("metergate_events_rejected_total{")
        }
        assert rejected == {bad.expected_reason: 1.0 for bad in scenario.malformed}

        kinds = Counter(event["kind"] for event in demo.limit_events())
        metering_kinds = {
            key.split('kind="')[1].rstrip('"}'): value
            for key, value in metering.items()
            if key.startswith("metergate_limit_events_total{") and value
        }
        kinds_from_metering = {kind: n for kind, n in kinds.items() if kind != "credits_depleted"}
        assert metering_kinds == kinds_from_metering
        sidecar = demo.services["entitlements"].metrics()
        assert metric_sum(sidecar, 'metergate_entitlements_records_applied_total{kind="limit"}') == sum(
            kinds.values()
        )

        rating = demo.services["rating"].metrics()
        aggregates = demo.final_aggregates()
        assert metric_sum(rating, "metergate_rating_updates_total") >= len(aggregates)
        with demo.connection() as connection:
            ledger_rows = connection.execute(
                "SELECT count(*) FROM credit_ledger WHERE entry_type <> 'credit_grant'"
            ).fetchone()[0]
        assert metric_sum(rating, "metergate_ledger_writes_total") == ledger_rows
    finally:
        demo.stop()
    assert pids and [pid for pid in pids if alive(pid)] == []
