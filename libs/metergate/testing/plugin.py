"""pytest plugin: real Kafka and PostgreSQL for metergate's tests (loaded by pyproject's addopts).

Where the services come from, in order:
1. METERGATE_KAFKA_BOOTSTRAP / METERGATE_DATABASE_URL: external services, nothing started;
2. testcontainers (Apache Kafka, PostgreSQL) when a Docker daemon answers;
3. the embedded stack otherwise (tansu broker + embedded PostgreSQL), once per session.

Each test gets its own topics (`topics`: a unique prefix, every topic created) and its own
database schema (`db_schema`: unique, migrated to head, dropped afterwards).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from metergate.kafka.topics import Topics

PARTITIONS = 4


@dataclass(frozen=True)
class TestServices:
    kafka_bootstrap: str
    database_url: str
    source: str  # "external", "testcontainers" or "embedded"


def _docker_reachable() -> bool:
    if os.environ.get("METERGATE_TEST_NO_DOCKER"):
        return False
    socket_path = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if socket_path.startswith("unix://") and not Path(socket_path[7:]).exists():
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def _testcontainers() -> Iterator[TestServices]:  # pragma: no cover - needs a Docker daemon
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    with (
        KafkaContainer().with_kraft() as kafka,
        PostgresContainer("postgres:16", driver="psycopg") as postgres,
    ):
        yield TestServices(kafka.get_bootstrap_server(), postgres.get_connection_url(), "testcontainers")


@contextlib.contextmanager
def _embedded(kafka_bootstrap: str | None, database_url: str | None) -> Iterator[TestServices]:
    from metergate.embedded.stack import EmbeddedStack
    from metergate.settings import DatabaseSettings, KafkaSettings

    data_dir = Path(tempfile.mkdtemp(prefix="metergate-test-"))
    stack = EmbeddedStack(
        data_dir,
        kafka=KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix="unused-"),
        database=DatabaseSettings(url=None if database_url is None else SecretStr(database_url)),
        create_topics=False,
        migrate=False,
    )
    try:
        info = stack.start()
        yield TestServices(info.kafka_bootstrap, info.database_url, "embedded")
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def metergate_services() -> Iterator[TestServices]:
    kafka = os.environ.get("METERGATE_KAFKA_BOOTSTRAP")
    database = os.environ.get("METERGATE_DATABASE_URL")
    if kafka and database:
        yield TestServices(kafka, database, "external")
    elif not kafka and not database and _docker_reachable():
        with _testcontainers() as services:
            yield services
    else:
        with _embedded(kafka, database) as services:
            yield services


@pytest.fixture(scope="session")
def kafka_bootstrap(metergate_services: TestServices) -> str:
    return metergate_services.kafka_bootstrap


@pytest.fixture(scope="session")
def kafka_config(kafka_bootstrap: str) -> dict[str, Any]:
    """confluent-kafka connection settings of the test broker."""
    return {"bootstrap.servers": kafka_bootstrap}


@pytest.fixture(scope="session")
def database_url(metergate_services: TestServices) -> str:
    return metergate_services.database_url


@pytest.fixture
def topics(kafka_config: dict[str, Any]) -> Topics:
    """Every metergate topic, under a prefix no other test uses."""
    from metergate.kafka.admin import ensure_topics

    names = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    ensure_topics(kafka_config, names, PARTITIONS)
    return names


@pytest.fixture
def db_schema(database_url: str) -> Iterator[str]:
    """A PostgreSQL schema of this test's own, migrated to head; dropped afterwards."""
    from sqlalchemy import text

    from metergate.db.engine import make_engine
    from metergate.db.migrate import upgrade

    schema = f"t_{uuid.uuid4().hex[:12]}"
    upgrade(database_url, schema)
    yield schema
    engine = make_engine(database_url, "public")
    try:
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()


@pytest.fixture
def metergate_env(kafka_bootstrap: str, database_url: str, topics: Topics, db_schema: str) -> dict[str, str]:
    """Environment for a metergate service started as a subprocess against this test's topics/schema."""
    return {
        **os.environ,
        "METERGATE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "METERGATE_KAFKA_TOPIC_PREFIX": topics.prefix,
        "METERGATE_DATABASE_URL": database_url,
        "METERGATE_DATABASE_SCHEMA": db_schema,
    }
