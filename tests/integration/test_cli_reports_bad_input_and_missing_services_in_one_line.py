"""The `metergate` command answers bad input, missing or unreachable services and wrong settings with
one line naming what was wrong and what would be right, exit code 2, never a traceback; with no
service configured it uses a running `metergate dev up` (its stack.env)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

METERGATE = str(Path(sys.executable).parent / "metergate")
CATALOG = """\
meters: {api_calls: {aggregation: SUM}}
features: {api_calls: {kind: metered, meter: api_calls}}
plans: {pro: {features: {api_calls: {included: 10, limit: 100, enforcement: hard}}}}
subscriptions: {acme: {plan: pro, anchor: ANCHOR}}
"""


def metergate(cwd: Path, *args: str, **env: str) -> tuple[int, str, str]:
    """Run the installed `metergate` command with no METERGATE_* setting but `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("METERGATE_")}
    done = subprocess.run(
        [METERGATE, *args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    return done.returncode, done.stdout, done.stderr


def one_line(code: int, out: str, err: str) -> str:
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_service_configured_and_no_stack_says_how_to_start_one(tmp_path):
    assert shutil.which(METERGATE)
    for command in (["credits", "balance"], ["finance", "export", "--period", "2026-03"], ["db", "upgrade"]):
        line = one_line(*metergate(tmp_path, *command))
        assert line == (
            "Error: METERGATE_DATABASE_URL is not set and no `metergate dev up` stack is running: start one "
            "with `metergate dev up` in another shell (commands find it), or set METERGATE_DATABASE_URL"
        ), command
    line = one_line(*metergate(tmp_path, "topics", "create"))
    assert line.startswith("Error: METERGATE_KAFKA_BOOTSTRAP is not set and no `metergate dev up` stack")


def test_commands_find_a_running_dev_stack(tmp_path, database_url, db_schema):
    stack = tmp_path / ".metergate"
    stack.mkdir()
    (stack / "stack.env").write_text(
        f"export METERGATE_DATABASE_URL={database_url}\nexport METERGATE_DATABASE_SCHEMA={db_schema}\n"
    )
    code, out, err = metergate(tmp_path, "db", "upgrade")
    assert code == 0, err
    code, out, err = metergate(tmp_path, "credits", "balance")
    assert (code, out, err) == (0, "no credit\n", "")


def test_finance_periods_outside_the_calendar(tmp_path, database_url, db_schema):
    env = {"METERGATE_DATABASE_URL": database_url, "METERGATE_DATABASE_SCHEMA": db_schema}
    for period in ("0000-01", "9999-12"):
        line = one_line(*metergate(tmp_path, "finance", "export", "--period", period, **env))
        assert line == f"Error: --period: expected a month between 0001-01 and 9999-11, got '{period}'"


def test_a_wrong_schema_and_an_unreachable_database_or_broker(tmp_path, database_url):
    line = one_line(
        *metergate(
            tmp_path,
            "credits",
            "balance",
            METERGATE_DATABASE_URL=database_url,
            METERGATE_DATABASE_SCHEMA="nope",
        )
    )
    assert line == (
        "Error: METERGATE_DATABASE_SCHEMA=nope: metergate's tables are not in schema 'nope' (run `metergate db "
        "upgrade`, or set it to the schema the migrations created, default metergate)"
    )
    port = _closed_port()
    line = one_line(
        *metergate(
            tmp_path, "credits", "balance", METERGATE_DATABASE_URL=f"postgresql://u@127.0.0.1:{port}/x"
        )
    )
    assert line.startswith("Error: PostgreSQL unreachable (") and line.endswith(
        "): is it running? Check METERGATE_DATABASE_URL or start `metergate dev up`"
    )
    line = one_line(*metergate(tmp_path, "topics", "create", METERGATE_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}"))
    assert line.startswith("Error: Kafka: ") and line.endswith(
        ": check METERGATE_KAFKA_BOOTSTRAP or start `metergate dev up`"
    )


@pytest.mark.parametrize(
    ("anchor", "message"),
    [
        (
            "2024-13-01",
            "subscriptions.acme.anchor: expected a date or an ISO 8601 timestamp like 2024-01-31T00:00:00Z, got '2024-13-01'",
        ),
        (
            "2024-01-31T25:00:00Z",
            "subscriptions.acme.anchor: expected a date or an ISO 8601 timestamp like 2024-01-31T00:00:00Z, got '2024-01-31T25:00:00Z'",
        ),
    ],
)
def test_catalog_dates_that_do_not_exist(tmp_path, anchor, message):
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG.replace("ANCHOR", anchor))
    line = one_line(*metergate(tmp_path, "catalog", "validate", str(path)))
    assert line == f"Error: {path}: {message}"


def test_catalog_duplicate_keys(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG.replace("ANCHOR", "2024-01-01") + "plans: {}\n")
    line = one_line(*metergate(tmp_path, "catalog", "validate", str(path)))
    assert (
        line
        == f"Error: {path}: line 5, column 1: duplicate key 'plans' (first at line 3): give each key once"
    )


def test_credit_amounts_as_people_write_them(tmp_path, database_url, db_schema):
    env = {"METERGATE_DATABASE_URL": database_url, "METERGATE_DATABASE_SCHEMA": db_schema}
    line = one_line(*metergate(tmp_path, "credits", "grant", "acme", "-5", **env))
    assert line == (
        "Error: amount: expected a positive amount such as 25.00, got -5 "
        "(credit is taken back by expiry, not by a negative grant)"
    )
    code, out, err = metergate(tmp_path, "credits", "grant", "acme", "1e3", "--grant-id", "k", **env)
    assert (code, err) == (0, ""), err
    assert out == "granted: k 1000 USD to acme, priority 10, expires never\n"


def test_emit_lines_without_timestamp_are_sent_at_now_like_the_flags(tmp_path, kafka_config, topics):
    from datetime import UTC, datetime, timedelta

    from metergate.domain.records import UsageEvent
    from metergate.testing.topics import read_topic
    from metergate.wire.codec import codec

    path = tmp_path / "events.jsonl"
    path.write_text('{"event_id": "n-1", "customer_id": "acme", "meter": "api_calls", "quantity": "1"}\n')
    env = {
        "METERGATE_KAFKA_BOOTSTRAP": kafka_config["bootstrap.servers"],
        "METERGATE_KAFKA_TOPIC_PREFIX": topics.prefix,
    }
    before = datetime.now(UTC) - timedelta(seconds=1)
    code, out, err = metergate(tmp_path, "emit", "--file", str(path), "--no-progress", **env)
    after = datetime.now(UTC) + timedelta(seconds=1)
    assert code == 0, err
    assert out == f"sent 1, rejected 0 of 1 events from {path}\n"
    [(_, value, _, _)] = read_topic(kafka_config, topics.events, expect=1)
    event = codec(UsageEvent).decode(value)
    assert event.event_id == "n-1" and before <= event.timestamp <= after
