"""Settings shared by every metergate process (pydantic-settings, frozen after load).

Each service composes the pieces it needs into its own settings class with its own prefix; the
shared pieces read the environment variables below. Defaults run the embedded stack; production
overrides by environment.

| variable | default | meaning |
| --- | --- | --- |
| METERGATE_KAFKA_BOOTSTRAP | (embedded) | Kafka bootstrap servers; when set, the embedded broker is not started |
| METERGATE_KAFKA_TOPIC_PREFIX | "" | prefix of every topic name (tests use a unique one) |
| METERGATE_KAFKA_PARTITIONS | 4 | partitions of the usage topics when metergate creates them |
| METERGATE_KAFKA_REPLICATION | 1 | replication factor of topics metergate creates |
| METERGATE_DATABASE_URL | (embedded) | PostgreSQL URL (postgresql+psycopg://...); when set, no embedded server |
| METERGATE_DATABASE_SCHEMA | metergate | PostgreSQL schema of metergate's tables |
| METERGATE_METRICS_PORT | 0 (off) | port of the Prometheus endpoint of the process |
| METERGATE_METRICS_HOST | 127.0.0.1 | address the Prometheus endpoint listens on (0.0.0.0: every interface) |
| METERGATE_KAFKA_SECURITY_PROTOCOL | (PLAINTEXT) | PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, for every Kafka client |
| METERGATE_KAFKA_SASL_MECHANISM / _USERNAME / _PASSWORD | | SASL credentials, for every Kafka client (Faust: `metergate.kafka.faust_broker`) |
| METERGATE_DATA_DIR | .metergate | where the embedded stack and local state live |
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from metergate.errors import ConfigurationError
from metergate.kafka.topics import Topics


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METERGATE_KAFKA_", frozen=True, extra="ignore")

    bootstrap: str | None = None
    topic_prefix: str = ""
    partitions: int = Field(default=4, ge=1)
    replication: int = Field(default=1, ge=1)
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None

    @property
    def topics(self) -> Topics:
        return Topics(prefix=self.topic_prefix)

    def client_config(self) -> dict[str, str]:
        """librdkafka (confluent-kafka) connection properties."""
        if not self.bootstrap:
            raise ConfigurationError(
                "METERGATE_KAFKA_BOOTSTRAP is not set and no embedded broker was started"
            )
        return self.client_config_for(self.bootstrap)

    def client_config_for(self, bootstrap: str) -> dict[str, str]:
        config = {"bootstrap.servers": bootstrap}
        if self.security_protocol:
            config["security.protocol"] = self.security_protocol
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password:
            config["sasl.password"] = self.sasl_password.get_secret_value()
        return config


class DatabaseSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="METERGATE_DATABASE_", frozen=True, extra="ignore", populate_by_name=True
    )

    url: SecretStr | None = None
    schema_name: str = Field(default="metergate", validation_alias="METERGATE_DATABASE_SCHEMA")

    def sqlalchemy_url(self) -> str:
        if self.url is None:
            raise ConfigurationError(
                "METERGATE_DATABASE_URL is not set and no embedded PostgreSQL was started"
            )
        url = self.url.get_secret_value()
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url


class MetricsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METERGATE_METRICS_", frozen=True, extra="ignore")

    port: int = Field(default=0, ge=0, le=65535)  # 0 = no endpoint
    host: str = "127.0.0.1"  # loopback, like every other listener; 0.0.0.0 exposes it


class StackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METERGATE_", frozen=True, extra="ignore")

    data_dir: Path = Path(".metergate")
