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
| METERGATE_LOG_LEVEL | WARNING | log level of every service (DEBUG, INFO, WARNING, ERROR) |

The pattern every service follows: one settings class with the prefix `METERGATE_<SERVICE>_`,
composed of the shared pieces here (`kafka`, `database`, `metrics`, `log`); a duration's name ends
in its unit, and that unit is seconds (`_S`), everywhere; a consumer group id is built by
`consumer_group()` (the topic prefix, then the service's name), so topic prefixes isolate groups as
they isolate topics. A setting that was renamed keeps working for a while: `renamed()` reads the
old name and logs one line saying what to set instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from metergate.errors import ConfigurationError
from metergate.kafka.topics import Topics


class NotConfigured(ConfigurationError, ValueError):
    """A service the process needs is not named by the environment (and no embedded one runs)."""


HOW_TO_START = "start one with `metergate dev up` in another shell (commands find it), or set {name}"


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
            raise NotConfigured(
                "METERGATE_KAFKA_BOOTSTRAP is not set and no `metergate dev up` stack is running: "
                + HOW_TO_START.format(name="METERGATE_KAFKA_BOOTSTRAP")
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
            raise NotConfigured(
                "METERGATE_DATABASE_URL is not set and no `metergate dev up` stack is running: "
                + HOW_TO_START.format(name="METERGATE_DATABASE_URL")
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


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class LogSettings(BaseSettings):
    """`METERGATE_LOG_LEVEL`, one setting for every service."""

    model_config = SettingsConfigDict(env_prefix="METERGATE_", frozen=True, extra="ignore")

    log_level: str = "WARNING"

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"METERGATE_LOG_LEVEL: expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
        return level

    def configure(self) -> None:
        """Log to stderr at this level (a service calls it once, at start-up)."""
        logging.basicConfig(level=self.log_level, format=LOG_FORMAT)


def consumer_group(kafka: KafkaSettings, name: str) -> str:
    """The one rule for a consumer group id: the topic prefix, then the service's name."""
    return f"{kafka.topic_prefix}{name}"


#: old field name -> (new field name, how an old value becomes a new one)
Renames = Mapping[str, tuple[str, Callable[[Any], Any]]]
_log = logging.getLogger("metergate.settings")


def renamed(data: Any, env_prefix: str, renames: Renames) -> Any:
    """For a settings class's `model_validator(mode="before")`: read each old name (a keyword
    argument, or the environment variable `env_prefix + OLD`) into its new field, with one warning
    line; the new name wins when both are given."""
    if not isinstance(data, dict):
        return data
    for old, (new, convert) in renames.items():
        variable = f"{env_prefix}{old}".upper()
        value = data.pop(old, None)
        if value is None:
            value = os.environ.get(variable)
        if value is None:
            continue
        new_variable = f"{env_prefix}{new}".upper()
        if new in data or new_variable in os.environ:
            _log.warning("%s is deprecated and ignored: %s is set", variable, new_variable)
            continue
        data[new] = convert(value)
        _log.warning("%s is deprecated: set %s=%s instead", variable, new_variable, data[new])
    return data
