"""Prometheus metrics of the metering worker (module level: one registry per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter("metergate_events_consumed_total", "Usage records read from usage.events")
EVENTS_ACCEPTED = Counter("metergate_events_accepted_total", "Usage events counted into an aggregate")
EVENTS_DUPLICATE = Counter(
    "metergate_events_duplicate_total", "Later copies of counted events (receipts written)"
)
EVENTS_REJECTED = Counter("metergate_events_rejected_total", "Usage records sent to the DLQ", ["reason"])
LIMIT_EVENTS = Counter("metergate_limit_events_total", "Limit events emitted", ["kind"])
CONSUMER_LAG = Gauge("metergate_consumer_lag", "Records of usage.events not yet processed", ["partition"])
PROCESSING_LATENCY = Histogram(
    "metergate_processing_latency_seconds",
    "From the record's Kafka timestamp to its batch being committed",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
