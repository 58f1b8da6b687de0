"""Prometheus metrics of the entitlement check (in-process and sidecar)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from metergate.domain.entitlements import Reason

_checks = Counter("metergate_entitlements_checks_total", "Entitlement decisions answered", ["reason"])
#: one child per reason, bound once (a labelled lookup per check would cost more than the check)
CHECKS = {reason: _checks.labels(reason.value) for reason in Reason}
REPORTED = Counter("metergate_entitlements_reported_total", "Usage events reported", ["status"])
APPLIED = Counter("metergate_entitlements_records_applied_total", "Records read into the state", ["kind"])
SKIPPED = Counter("metergate_entitlements_records_skipped_total", "Records not applied", ["topic", "reason"])
CHECKPOINTS = Counter("metergate_entitlements_checkpoints_total", "Checkpoints written to disk")
PENDING = Gauge("metergate_entitlements_pending_events", "Reported events not yet included in an aggregate")
