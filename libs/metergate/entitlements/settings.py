"""Settings of the entitlement check (in-process library and sidecar): `METERGATE_ENTITLEMENTS_*`.

| variable | default | meaning |
| --- | --- | --- |
| METERGATE_ENTITLEMENTS_HTTP_HOST | 127.0.0.1 | sidecar listen address (loopback: only this host's applications) |
| METERGATE_ENTITLEMENTS_HTTP_PORT | 8182 | sidecar port (0 = any free port) |
| METERGATE_ENTITLEMENTS_KEYS_FILE | .metergate/entitlements-keys.json | API keys (hashes only, mode 0600), written by `metergate keys` |
| METERGATE_ENTITLEMENTS_CHECKPOINT_PATH | .metergate/entitlements-checkpoint.json | disk checkpoint of the local state ("" = none) |
| METERGATE_ENTITLEMENTS_CHECKPOINT_INTERVAL_S | 5 | how often the checkpoint is rewritten when the state changed |
| METERGATE_ENTITLEMENTS_STALE_AFTER_S | 3 | no answer from the broker for this long: decisions say `stale: true` |
| METERGATE_ENTITLEMENTS_FALLBACK | {} | per-feature decision for customers never seen, JSON, e.g. `{"sso": true, "*": false}` |
| METERGATE_ENTITLEMENTS_INGEST_TIMEOUT_S | 10 | longest wait for Kafka to acknowledge reported usage |
| METERGATE_ENTITLEMENTS_CATCH_UP_TIMEOUT_S | 60 | `from_env()` waits this long for the state to catch up (0 = do not wait) |
| METERGATE_METERING_APP_ID | metergate-metering | the metering worker's app id (the variable metering reads): its state changelog `<prefix><app id>-state-changelog` has the partition count usage is counted by |

Shared: METERGATE_KAFKA_* and METERGATE_METRICS_PORT (see `metergate.settings`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from metergate.settings import KafkaSettings, MetricsSettings


class EntitlementsSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="METERGATE_ENTITLEMENTS_", frozen=True, extra="ignore", populate_by_name=True
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8182, ge=0, le=65535)
    keys_file: Path = Path(".metergate/entitlements-keys.json")
    checkpoint_path: Path | None = Path(".metergate/entitlements-checkpoint.json")
    checkpoint_interval_s: float = Field(default=5.0, gt=0)
    stale_after_s: float = Field(default=3.0, gt=0)
    fallback: dict[str, bool] = Field(default_factory=dict)
    ingest_timeout_s: float = Field(default=10.0, gt=0)
    catch_up_timeout_s: float = Field(default=60.0, ge=0)
    metering_app_id: str = Field(
        default="metergate-metering",
        min_length=1,
        validation_alias="METERGATE_METERING_APP_ID",
    )

    @property
    def metering_changelog_topic(self) -> str:
        """Metering's state changelog (services/metering/settings.py: the same name)."""
        return f"{self.kafka.topic_prefix}{self.metering_app_id}-state-changelog"

    @field_validator("checkpoint_path", mode="before")
    @classmethod
    def _no_checkpoint(cls, value: Any) -> Any:
        return None if value == "" else value
