"""A wheel built from the project installs into a fresh virtual environment, where `metergate --help`
runs, the codec finds its Avro schemas (package data) and round-trips a record, and the hot records'
reader is the compiled one."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.packaging, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
ROUND_TRIP = """
from datetime import UTC, datetime
from decimal import Decimal
from metergate.domain.records import UsageEvent
from metergate.wire import fastwire
from metergate.wire.codec import codec, schemas_dir
event = UsageEvent(event_id="w-1", customer_id="acme", meter="api_calls", quantity=Decimal("2.5"),
                   timestamp=datetime(2026, 3, 1, tzinfo=UTC))
data = codec(UsageEvent).encode(event)
assert codec(UsageEvent).decode(data) == event
assert fastwire.COMPILED and fastwire.read_event(data)["quantity"] == Decimal("2.5")
print(schemas_dir(), data[:10].hex(" "))
"""


def _run(*args: str | Path, cwd: Path) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_wheel_installs_and_reads_its_schemas(tmp_path):
    source = tmp_path / "source"  # a copy: building must not leave build/ or *.egg-info in the checkout
    listed = _run(
        "git", "ls-files", "pyproject.toml", "setup.py", "README.md", "libs", "services", "schemas", cwd=ROOT
    )
    for name in listed.splitlines():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    _run(
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp_path / "dist", ".", cwd=source
    )
    (wheel,) = (tmp_path / "dist").glob("metergate-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        shipped = sorted(n for n in names if n.endswith(".avsc"))
    compiled = [n for n in names if n.startswith("metergate/wire/fastwire.") and n.endswith(".so")]
    assert len(compiled) == 1, names  # the hot records' reader ships compiled
    assert shipped == sorted(  # the current schemas and the older writers in history/
        f"metergate/schemas/{p.relative_to(ROOT / 'schemas').as_posix()}"
        for p in (ROOT / "schemas").rglob("*.avsc")
    )

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel, cwd=tmp_path)
    assert "metergate: usage metering" in _run(venv / "bin" / "metergate", "--help", cwd=tmp_path)
    out = _run(venv / "bin" / "python", "-c", ROUND_TRIP, cwd=tmp_path)  # outside the checkout
    location, header = out.strip().split(" ", 1)
    assert (
        Path(location)
        == venv
        / "lib"
        / f"python{sys.version_info.major}.{sys.version_info.minor}"
        / "site-packages"
        / "metergate"
        / "schemas"
    )
    assert header == "c3 01 60 28 c0 cc 0f dd e9 db"
