"""The project's own files agree with the code: packages listed, compose names every service and topic."""

from __future__ import annotations

import ast
import re
import sys
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


# -- which way the imports run ------------------------------------------------------------------------
#: third-party packages the pure core may use: models and validation, no I/O
PURE_THIRD_PARTY = {"pydantic"}


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at module level or inside a function (lazy imports count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _modules(base: Path, skip: Path | None = None) -> list[Path]:
    return sorted(p for p in base.rglob("*.py") if skip is None or skip not in p.parents)


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_no_product_module_imports_test_support():
    offenders = {
        f"{path.relative_to(ROOT)} imports {module}"
        for path in _modules(ROOT / "libs/metergate", skip=ROOT / "libs/metergate/testing")
        + _modules(ROOT / "services")
        for module in _imports(path)
        if _under(module, "metergate.testing") or _under(module, "tests")
    }
    assert offenders == set(), "the product (libs/metergate outside testing/, services/) uses test support"


def test_the_libraries_do_not_import_the_services():
    offenders = {
        f"{path.relative_to(ROOT)} imports {module}"
        for path in _modules(ROOT / "libs/metergate")
        for module in _imports(path)
        if _under(module, "metergate_services")
    }
    assert offenders == set(), "libs/ is imported by services/, never the other way"


def test_the_domain_imports_only_the_stdlib_itself_and_pure_packages():
    offenders = {
        f"{path.relative_to(ROOT)} imports {module}"
        for path in _modules(ROOT / "libs/metergate/domain")
        for module in _imports(path)
        if not (
            module.split(".")[0] in sys.stdlib_module_names
            or module == "__future__"
            or _under(module, "metergate.domain")
            or module == "metergate.errors"
            or module.split(".")[0] in PURE_THIRD_PARTY
        )
    }
    assert offenders == set(), "the domain is pure: no Kafka, database, metrics or other adapter imports"


def test_the_import_rules_see_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f():\n    from confluent_kafka import Producer\n    import metergate.testing.topics\n"
    )
    assert _imports(bad) == {"confluent_kafka", "metergate.testing.topics"}
