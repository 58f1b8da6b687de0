"""The embedded stack: a Kafka-protocol broker and a PostgreSQL server, started by metergate itself.

    with EmbeddedStack(Path(".metergate")) as stack:
        stack.kafka_bootstrap, stack.database_url

Start order: broker, PostgreSQL, topics, migrations. Stop order: the reverse of what started. Each
part is skipped when the environment names an external service instead
(METERGATE_KAFKA_BOOTSTRAP / METERGATE_DATABASE_URL). Every child process dies with its parent
(PR_SET_PDEATHSIG) and is stopped by its PID on exit, on SIGINT/SIGTERM and on error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from metergate.db.migrate import upgrade
from metergate.embedded.broker import EmbeddedBroker
from metergate.embedded.postgres import EmbeddedPostgres
from metergate.errors import StackError
from metergate.kafka.admin import ensure_topics
from metergate.kafka.topics import Topics
from metergate.settings import DatabaseSettings, KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackInfo:
    kafka_bootstrap: str
    database_url: str
    database_schema: str
    broker_pid: int | None
    postgres_pid: int | None
    startup_s: float

    def environment(self) -> dict[str, str]:
        """Environment variables that point a metergate process at this stack."""
        return {
            "METERGATE_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "METERGATE_DATABASE_URL": self.database_url,
            "METERGATE_DATABASE_SCHEMA": self.database_schema,
        }


class EmbeddedStack:
    def __init__(
        self,
        data_dir: Path = Path(".metergate"),
        *,
        kafka: KafkaSettings | None = None,
        database: DatabaseSettings | None = None,
        create_topics: bool = True,
        migrate: bool = True,
        start_kafka: bool = True,
        start_postgres: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.kafka = kafka or KafkaSettings()
        self.database = database or DatabaseSettings()
        self.create_topics = create_topics
        self.migrate = migrate
        self.start_kafka = start_kafka
        self.start_postgres = start_postgres
        self.broker: EmbeddedBroker | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.info: StackInfo | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> StackInfo:
        started = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            bootstrap = self.kafka.bootstrap
            if bootstrap is None and self.start_kafka:
                self.broker = EmbeddedBroker(self.data_dir)
                self.broker.start()
                bootstrap = self.broker.bootstrap
                log.info("embedded broker on %s (pid %s)", bootstrap, self.broker.pid)
            database_url = None if self.database.url is None else self.database.sqlalchemy_url()
            if database_url is None and self.start_postgres:
                self.postgres = EmbeddedPostgres(self.data_dir)
                self.postgres.start()
                database_url = self.postgres.url
                log.info("embedded PostgreSQL on %s (pid %s)", database_url, self.postgres.pid)
            if bootstrap and self.create_topics:
                config = {**self.kafka.client_config_for(bootstrap)}
                ensure_topics(
                    config, Topics(self.kafka.topic_prefix), self.kafka.partitions, self.kafka.replication
                )
            if database_url and self.migrate:
                upgrade(database_url, self.database.schema_name)
        except BaseException:
            self.stop()
            raise
        self.info = StackInfo(
            kafka_bootstrap=bootstrap or "",
            database_url=database_url or "",
            database_schema=self.database.schema_name,
            broker_pid=None if self.broker is None else self.broker.pid,
            postgres_pid=None if self.postgres is None else self.postgres.pid,
            startup_s=time.monotonic() - started,
        )
        return self.info

    def stop(self) -> None:
        errors = []
        for part in (self.postgres, self.broker):
            if part is None:
                continue
            try:
                part.stop()
            except Exception as exc:  # keep stopping the others, then report
                errors.append(exc)
        self.postgres = None
        self.broker = None
        if errors:
            raise StackError(f"could not stop every part of the stack: {errors}")

    def __enter__(self) -> StackInfo:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- conveniences ------------------------------------------------------------------------------
    @property
    def kafka_bootstrap(self) -> str:
        if self.info is None:
            raise StackError("stack not started")
        return self.info.kafka_bootstrap

    @property
    def database_url(self) -> str:
        if self.info is None:
            raise StackError("stack not started")
        return self.info.database_url
