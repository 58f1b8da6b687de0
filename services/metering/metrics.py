"""Prometheus metrics of the metering worker (module level: one registry per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter("metergate_events_consumed_total", "Usage records read from usage.events")
EVENTS_ACCEPTED = Counter("metergate_events_accepted_total", "Usage events counted into an aggregate")
EVENTS_DUPLICATE = Counter(
    "metergate_events_duplicate_total", "Later copies of counted events (receipts written)"
)
EVENTS_REJECTED = Counter("metergate_events_rejected_total", "Usage records sent to the DLQ", ["reason"])
EVENTS_FORWARDED = Counter(
    "metergate_events_forwarded_total",
    "Valid records read on another partition than their customer's, re-produced to it (counted there)",
)
OFFSET_GAPS = Counter(
    "metergate_offset_gaps_total",
    "Input offsets the log does not hold (transaction markers, retention), checked against the broker",
    ["partition"],
)
ACCOUNTED = Gauge(
    "metergate_records_accounted",
    "Durable accounting of each input partition (kept with the state, survives restarts): "
    "input = accepted + duplicate + rejected + forwarded + gap",
    ["partition", "outcome"],
)
LIMIT_EVENTS = Counter("metergate_limit_events_total", "Limit events emitted", ["kind"])
CONSUMER_LAG = Gauge("metergate_consumer_lag", "Records of usage.events not yet processed", ["partition"])
PROCESSING_LATENCY = Histogram(
    "metergate_processing_latency_seconds",
    "From the record's Kafka timestamp to its batch being committed (up to 256 records per batch, evenly spread)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
STARTUP = Gauge(
    "metergate_startup_seconds",
    "Seconds from the worker process's start to each step of its start-up (imported, state_opened, "
    "joined, first_batch, catalog_current, first_commit; cpu: CPU seconds used by the first commit)",
    ["step"],
)
