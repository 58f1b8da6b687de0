"""Settings of the admin API: `METERGATE_ADMIN_*`.

| variable | default | meaning |
| --- | --- | --- |
| METERGATE_ADMIN_HTTP_HOST | 127.0.0.1 | listen address (loopback: only this host's tools) |
| METERGATE_ADMIN_HTTP_PORT | 8183 | port (0 = any free port) |
| METERGATE_ADMIN_KEYS_FILE | `METERGATE_ENTITLEMENTS_KEYS_FILE`, else .metergate/entitlements-keys.json | API keys, written by `metergate keys create --scope admin` |
| METERGATE_ADMIN_RELAY | true | relay the catalog outbox to entitlements.snapshots in this process (as `metergate subscriptions publish --follow` does) |
| METERGATE_ADMIN_RELAY_INTERVAL_S | 0.1 | pause of the relay between idle rounds |

Shared: METERGATE_DATABASE_*, METERGATE_KAFKA_* (the relay), METERGATE_METRICS_PORT.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from metergate.settings import DatabaseSettings, KafkaSettings, MetricsSettings


class AdminSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="METERGATE_ADMIN_", frozen=True, extra="ignore", populate_by_name=True
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8183, ge=0, le=65535)
    keys_file: Path = Field(
        default=Path(".metergate/entitlements-keys.json"),
        validation_alias=AliasChoices("METERGATE_ADMIN_KEYS_FILE", "METERGATE_ENTITLEMENTS_KEYS_FILE"),
    )
    relay: bool = True
    relay_interval_s: float = Field(default=0.1, gt=0)
