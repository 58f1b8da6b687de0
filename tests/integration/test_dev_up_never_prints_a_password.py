"""`metergate dev up` with an external database: the password is never printed, the file holding it is
readable by its owner only, a psql URL is printed, and SIGTERM stops it at once (stack.env removed)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from sqlalchemy.engine import make_url

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGINT])
def test_dev_up_keeps_the_database_password_secret(tmp_path, database_url, db_schema, stop_with):
    url = make_url(database_url).set(password="hunter2-secret")  # trust auth: any password passes
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERGATE_")}
    env.update(
        PYTHONUNBUFFERED="1",
        METERGATE_DATABASE_URL=url.render_as_string(hide_password=False),
        METERGATE_DATABASE_SCHEMA=db_schema,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "metergate.cli.main", "dev", "up", "--data-dir", str(tmp_path / "stack")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops the stack" in line:
                break
        env_file = tmp_path / "stack" / "stack.env"
        assert "Ctrl-C stops the stack" in "".join(lines), "".join(lines)
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert "hunter2-secret" in env_file.read_text()  # the file is how other shells connect
    finally:
        process.send_signal(stop_with)
        rest, _ = process.communicate(timeout=60)
    output = "".join(lines) + rest
    assert process.returncode == 0, output
    assert "hunter2-secret" not in output
    shown = url.render_as_string(hide_password=True)
    assert f"  METERGATE_DATABASE_URL={shown}\n" in output
    assert f"  psql: {shown.replace('postgresql+psycopg://', 'postgresql://')}\n" in output
    assert "stopped: no process left behind" in output
    assert not (tmp_path / "stack" / "stack.env").exists()
