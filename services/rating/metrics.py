"""Prometheus metrics of the rating consumer (served by `metergate.metrics.serve` when a port is set)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

UPDATES = Counter("metergate_rating_updates", "Aggregate updates rated and committed (newer versions)")
STALE = Counter("metergate_rating_stale", "Aggregate updates ignored: not newer than the stored version")
BATCH_SECONDS = Histogram(
    "metergate_rating_batch_seconds",
    "Time to rate and commit one poll batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LEDGER_WRITES = Counter("metergate_ledger_writes", "Credit-ledger entries written", ["entry_type"])
LINE_ITEMS = Counter("metergate_line_items_written", "Line items inserted or updated")
REJECTED = Counter("metergate_rating_rejected", "Records sent to the DLQ by rating", ["reason"])
LAG = Gauge("metergate_consumer_lag", "Records of usage.aggregates not yet rated", ["partition"])
DB_RETRIES = Counter("metergate_rating_db_retries", "PostgreSQL failures the consumer waited out")
LIMITS_PUBLISHED = Counter("metergate_rating_limit_events_published", "credits_depleted events published")
BALANCES_PUBLISHED = Counter(
    "metergate_rating_balances_published", "Credit balances published to credits.balances (delivered)"
)

#: The accounting invariant, per process: every record of usage.aggregates whose batch committed is
#: counted once in CONSUMED and once in RECORDS under exactly one outcome, so
#: consumed = accepted + duplicate + rejected + tombstone (a tombstone of the compacted topic
#: carries nothing to rate). `duplicate`: not newer than the stored version, or superseded by a
#: newer one in its batch. `rejected`: sent to the DLQ and not rated (an unpriced record that is
#: stored *and* reported to the DLQ, such as `unknown_plan`, is `accepted`).
CONSUMED = Counter("metergate_rating_consumed", "Records of usage.aggregates consumed and committed")
RECORDS = Counter("metergate_rating_records", "Committed records of usage.aggregates by outcome", ["outcome"])
OUTCOMES = ("accepted", "duplicate", "rejected", "tombstone")
