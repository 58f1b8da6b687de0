"""The project's own files agree with the code: packages listed, compose names every service and topic."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from metergate.cli.services import SERVICES
from metergate.kafka.topics import TOPIC_SPECS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_every_python_package_is_listed_in_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    found = set()
    for base, name in (
        ("libs/metergate", "metergate"),
        ("services", "metergate_services"),
        ("schemas", "metergate.schemas"),  # the Avro schemas, shipped as package data
    ):
        for init in (ROOT / base).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / base)
            found.add(".".join((name, *relative.parts)))
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - found == set(), "listed but missing on disk"


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_every_service_and_the_infrastructure():
    services = _compose()["services"]
    assert {"kafka", "postgres", "prometheus", "kafka-init", "db-migrate"} <= set(services)
    for name in SERVICES:
        assert services[name]["command"] == ["run", name]
        assert services[name]["environment"]["METERGATE_KAFKA_BOOTSTRAP"] == "kafka:9092"


def test_compose_creates_every_topic_with_its_cleanup_policy():
    script = _compose()["services"]["kafka-init"]["command"][0]
    created = {name: policy for name, _, policy in re.findall(r"^create (\S+) (\d+) (\w+)$", script, re.M)}
    expected = {spec.name: "compact" if spec.compacted else "delete" for spec in TOPIC_SPECS}
    assert created == expected


def test_prometheus_scrapes_every_service():
    config = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())
    targets = {
        t.split(":")[0]
        for job in config["scrape_configs"]
        for c in job["static_configs"]
        for t in c["targets"]
    }
    assert targets == set(SERVICES)
