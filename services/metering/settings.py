"""Settings of the metering worker (env prefix METERGATE_METERING_), composed of the shared pieces.

| variable | default | meaning |
| --- | --- | --- |
| METERGATE_METERING_APP_ID | metergate-metering | Faust app id = consumer group (the topic prefix is put in front) |
| METERGATE_METERING_DATA_DIR | .metergate/metering | RocksDB state + Faust's data dir |
| METERGATE_METERING_DEDUP_WINDOW | P35D (35 days) | dedup window in event time (seconds or ISO 8601 duration) |
| METERGATE_METERING_FUTURE_SKEW | PT5M | how far ahead of the worker's clock an event may be |
| METERGATE_METERING_LATE_GRACE | P1D | a period closed longer than this before an event arrives makes its aggregate `late` |
| METERGATE_METERING_BATCH_SIZE | 5000 | most records per fetch |
| METERGATE_METERING_MAX_BATCH | 50000 | most records processed and committed as one batch (queued fetches are merged when processing falls behind) |
| METERGATE_METERING_SESSION_TIMEOUT_S | 3 | consumer-group session timeout: how long a killed worker's partitions wait (tansu also holds each JoinGroup about half of it) |
| METERGATE_METERING_HEARTBEAT_INTERVAL_S | 0.5 | consumer-group heartbeat interval |
| METERGATE_METERING_REBALANCE_TIMEOUT_S | 10 | consumer-group rebalance timeout |
| METERGATE_METERING_RECOVERY_IDLE_S | 0.3 | when reading a changelog/output tail, how long "no new record" means its end |
| METERGATE_METERING_FAULT | (none) | tests only: `STEP@N` SIGKILLs the worker at STEP of the commit order (commit.py) in batch N (`..._CRASH_POINT` + `..._CRASH_AFTER_BATCHES` still read) |
| METERGATE_KAFKA_* / METERGATE_METRICS_PORT | | shared: bootstrap, topic prefix, ...; the Prometheus port |
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from metergate.settings import KafkaSettings, MetricsSettings


class MeteringSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METERGATE_METERING_", frozen=True, extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    app_id: str = "metergate-metering"
    data_dir: Path = Path(".metergate/metering")
    dedup_window: timedelta = timedelta(days=35)
    future_skew: timedelta = timedelta(minutes=5)
    late_grace: timedelta = timedelta(days=1)
    batch_size: int = Field(default=5000, ge=1)
    max_batch: int = Field(default=50_000, ge=1)
    session_timeout_s: float = Field(default=3.0, gt=0)
    heartbeat_interval_s: float = Field(default=0.5, gt=0)
    rebalance_timeout_s: float = Field(default=10.0, gt=0)
    recovery_idle_s: float = Field(default=0.3, gt=0)
    #: fault injection for tests (metergate.faults): STEP@N, STEP a step of the commit order
    #: (outputs_partial, outputs_sent, changelog_partial, changelog_sent, state_written)
    fault: str | None = None
    #: the same, as two settings (older tests and scripts)
    crash_point: str | None = None
    crash_after_batches: int = Field(default=1, ge=1)

    @property
    def fault_spec(self) -> str | None:
        if self.fault:
            return self.fault
        return f"{self.crash_point}@{self.crash_after_batches}" if self.crash_point else None

    @property
    def group_id(self) -> str:
        return f"{self.kafka.topic_prefix}{self.app_id}"

    @property
    def changelog_topic(self) -> str:
        """The worker's own state changelog (see services/metering/README.md)."""
        return f"{self.kafka.topic_prefix}{self.app_id}-state-changelog"
