"""Settings of the rating consumer: `METERGATE_RATING_*`, plus the shared Kafka/database/metrics pieces.

| variable | default | meaning |
| --- | --- | --- |
| METERGATE_RATING_APP_ID | metergate-rating | the service's name; the consumer group is the topic prefix + this (`consumer_group`) |
| METERGATE_RATING_GROUP_ID | (topic prefix + APP_ID) | the whole consumer group id, verbatim, when set (offsets are stored in PostgreSQL under it) |
| METERGATE_RATING_BATCH_SIZE | 5000 | most records rated in one transaction |
| METERGATE_RATING_POLL_TIMEOUT_S | 0.5 | longest wait for a batch to fill |
| METERGATE_RATING_SNAPSHOT_IDLE_S | 0.5 | snapshot catch-up: no new snapshot for this long = caught up |
| METERGATE_RATING_SNAPSHOT_TIMEOUT_S | 60 | longest start-up catch-up of entitlements.snapshots |
| METERGATE_RATING_RETRY_INITIAL_S | 0.2 | first wait after PostgreSQL failed (doubles each retry) |
| METERGATE_RATING_RETRY_MAX_S | 5 | longest wait between retries |
| METERGATE_RATING_EXPIRY_INTERVAL_S | 60 | how often expired credit grants are closed (0 = never) |
| METERGATE_RATING_LAG_INTERVAL_S | 10 | how often consumer lag is measured (0 = never) |
| METERGATE_RATING_SESSION_TIMEOUT_S | 6 | Kafka group session timeout, seconds (a killed worker's partitions move after it) |
| METERGATE_RATING_LINE_CACHE_KEYS | 100000 | aggregate keys whose committed lines stay in memory (0 = always read PostgreSQL) |
| METERGATE_RATING_OUTBOX_INTERVAL_S | 1 | how often the outboxes are looked at besides after each batch that wrote ledger entries (what `metergate credits grant`/`expire` recorded is published within it) |
| METERGATE_RATING_FEE_LOOKBACK_PERIODS | 1 | how many periods before the current one a newly read dated snapshot may still bill fee lines in (0 = the current period only) |
| METERGATE_RATING_CLOCK_START | (the real time) | tests and demos: the clock reads this moment (ISO 8601 with a zone) at start, then runs at the real pace; it decides which billing period is current for base fees |
| METERGATE_RATING_FLUSH_TIMEOUT_S | 30 | longest wait for the broker's acks of a batch's DLQ records (then the batch is redone) and of limit events per round (they stay in flight, never re-sent) |

Shared: METERGATE_KAFKA_* (bootstrap, topic prefix, security), METERGATE_DATABASE_URL and
METERGATE_DATABASE_SCHEMA, METERGATE_METRICS_PORT, METERGATE_LOG_LEVEL (see `metergate.settings`).

Renamed (still read, with one warning line): `METERGATE_RATING_SESSION_TIMEOUT_MS` (milliseconds)
is now `METERGATE_RATING_SESSION_TIMEOUT_S`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pydantic import AwareDatetime, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from metergate.domain.records import now_utc
from metergate.settings import (
    DatabaseSettings,
    KafkaSettings,
    LogSettings,
    MetricsSettings,
    consumer_group,
    renamed,
)


class RatingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METERGATE_RATING_", frozen=True, extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    app_id: str = "metergate-rating"
    #: the consumer group; built from the prefix and app_id unless set (verbatim)
    group_id: str = ""
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    poll_timeout_s: float = Field(default=0.5, gt=0)
    snapshot_idle_s: float = Field(default=0.5, gt=0)
    snapshot_timeout_s: float = Field(default=60.0, gt=0)
    retry_initial_s: float = Field(default=0.2, gt=0)
    retry_max_s: float = Field(default=5.0, gt=0)
    expiry_interval_s: float = Field(default=60.0, ge=0)
    lag_interval_s: float = Field(default=10.0, ge=0)
    session_timeout_s: float = Field(default=6.0, ge=1.0)
    line_cache_keys: int = Field(default=100_000, ge=0)
    flush_timeout_s: float = Field(default=30.0, gt=0)
    outbox_interval_s: float = Field(default=1.0, gt=0)
    fee_lookback_periods: int = Field(default=1, ge=0, le=24)
    clock_start: AwareDatetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return renamed(data, "METERGATE_RATING_", {"session_timeout_ms": ("session_timeout_s", _ms_to_s)})

    @model_validator(mode="after")
    def _group(self) -> RatingSettings:
        if not self.group_id:
            object.__setattr__(self, "group_id", consumer_group(self.kafka, self.app_id))  # frozen
        return self

    def clock(self) -> Callable[[], datetime]:
        """The clock that decides which billing period is current: the real time, or one that
        starts at `clock_start` and runs at the real pace."""
        if self.clock_start is None:
            return now_utc
        start, origin = self.clock_start, time.monotonic()
        return lambda: start + timedelta(seconds=time.monotonic() - origin)

    @property
    def session_timeout_ms(self) -> int:
        """The session timeout as librdkafka takes it."""
        return round(self.session_timeout_s * 1000)


def _ms_to_s(value: Any) -> float:
    return int(value) / 1000
