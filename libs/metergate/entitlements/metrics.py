"""Prometheus metrics of the entitlement check (in-process and sidecar)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from metergate.domain.entitlements import Reason

#: decisions per reason, counted in a plain dict (a prometheus_client Counter takes a lock per
#: increment, about as long as the check itself) and exported by the collector below. Increments
#: from several threads at once can, rarely, lose a count: it is a metric, not a ledger.
CHECKS: dict[Reason, int] = dict.fromkeys(Reason, 0)


class _ChecksCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "metergate_entitlements_checks", "Entitlement decisions answered", labels=["reason"]
        )
        for reason, count in CHECKS.items():
            family.add_metric([reason.value], count)
        yield family


REGISTRY.register(_ChecksCollector())
REPORTED = Counter("metergate_entitlements_reported_total", "Usage events reported", ["status"])
APPLIED = Counter("metergate_entitlements_records_applied_total", "Records read into the state", ["kind"])
SKIPPED = Counter("metergate_entitlements_records_skipped_total", "Records not applied", ["topic", "reason"])
CHECKPOINTS = Counter("metergate_entitlements_checkpoints_total", "Checkpoints written to disk")
PENDING = Gauge("metergate_entitlements_pending_events", "Reported events not yet included in an aggregate")
