"""Settings of the metering worker (env prefix METERGATE_METERING_), composed of the shared pieces.

| variable | default | meaning |
| --- | --- | --- |
| METERGATE_METERING_APP_ID | metergate-metering | Faust app id; the consumer group is the topic prefix + this (`consumer_group`) |
| METERGATE_METERING_DATA_DIR | .metergate/metering | RocksDB state, the recorded group membership, Faust's data dir |
| METERGATE_METERING_DEDUP_WINDOW_S | 3024000 (35 days) | dedup window in event time, seconds |
| METERGATE_METERING_FUTURE_SKEW_S | 300 | how far ahead of the worker's clock an event may be, seconds |
| METERGATE_METERING_LATE_GRACE_S | 86400 (1 day) | a period closed longer than this before an event arrives makes its aggregate `late`, seconds |
| METERGATE_METERING_BATCH_SIZE | 5000 | most records per fetch |
| METERGATE_METERING_MAX_BATCH | 50000 | most records processed and committed as one batch (queued fetches are merged when processing falls behind) |
| METERGATE_METERING_SESSION_TIMEOUT_S | 6 | consumer-group session timeout: a worker restarted on its data dir within it takes its partitions back at once; otherwise a killed worker's partitions wait that long (tansu also holds each JoinGroup about half of it) |
| METERGATE_METERING_HEARTBEAT_INTERVAL_S | 1 | consumer-group heartbeat interval |
| METERGATE_METERING_REBALANCE_TIMEOUT_S | 10 | consumer-group rebalance timeout |
| METERGATE_METERING_RECOVERY_IDLE_S | 0.3 | when reading a changelog/output tail, how long "no new record" means its end |
| METERGATE_METERING_FAULT | (none) | tests only: `STEP@N` SIGKILLs the worker at STEP of the commit order (commit.py) in batch N (`..._CRASH_POINT` + `..._CRASH_AFTER_BATCHES` still read) |
| METERGATE_KAFKA_* / METERGATE_METRICS_PORT / METERGATE_LOG_LEVEL | | shared: bootstrap, topic prefix, ...; the Prometheus port; the log level |

Renamed (still read, with one warning line): `METERGATE_METERING_DEDUP_WINDOW`, `_FUTURE_SKEW` and
`_LATE_GRACE` (seconds or an ISO 8601 duration such as `P35D`) are now the `_S` settings above.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import Field, TypeAdapter, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from metergate.settings import KafkaSettings, LogSettings, MetricsSettings, consumer_group, renamed

_DURATION = TypeAdapter(timedelta)


def _seconds(value: Any) -> float:
    """An old duration setting (seconds, an ISO 8601 duration, or a timedelta) in seconds."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass  # an ISO 8601 duration
    return _DURATION.validate_python(value).total_seconds()


class MeteringSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METERGATE_METERING_", frozen=True, extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    app_id: str = "metergate-metering"
    data_dir: Path = Path(".metergate/metering")
    dedup_window_s: float = Field(default=35 * 86_400, gt=0)
    future_skew_s: float = Field(default=300, ge=0)
    late_grace_s: float = Field(default=86_400, ge=0)
    batch_size: int = Field(default=5000, ge=1)
    max_batch: int = Field(default=50_000, ge=1)
    session_timeout_s: float = Field(default=6.0, gt=0)
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    rebalance_timeout_s: float = Field(default=10.0, gt=0)
    recovery_idle_s: float = Field(default=0.3, gt=0)
    #: fault injection for tests (metergate.faults): STEP@N, STEP a step of the commit order
    #: (outputs_partial, outputs_sent, changelog_partial, changelog_sent, state_written)
    fault: str | None = None
    #: the same, as two settings (older tests and scripts)
    crash_point: str | None = None
    crash_after_batches: int = Field(default=1, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return renamed(
            data,
            "METERGATE_METERING_",
            {
                "dedup_window": ("dedup_window_s", _seconds),
                "future_skew": ("future_skew_s", _seconds),
                "late_grace": ("late_grace_s", _seconds),
            },
        )

    @property
    def dedup_window(self) -> timedelta:
        return timedelta(seconds=self.dedup_window_s)

    @property
    def future_skew(self) -> timedelta:
        return timedelta(seconds=self.future_skew_s)

    @property
    def late_grace(self) -> timedelta:
        return timedelta(seconds=self.late_grace_s)

    @property
    def fault_spec(self) -> str | None:
        if self.fault:
            return self.fault
        return f"{self.crash_point}@{self.crash_after_batches}" if self.crash_point else None

    @property
    def group_id(self) -> str:
        return consumer_group(self.kafka, self.app_id)

    @property
    def changelog_topic(self) -> str:
        """The worker's own state changelog (see services/metering/README.md)."""
        return f"{self.group_id}-state-changelog"
