"""`metergate emit --file` sends the valid lines, names the field of each bad one, and sends none of them."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from click.testing import CliRunner

from metergate.cli.main import main
from metergate.domain.records import UsageEvent
from metergate.testing.topics import read_topic
from metergate.wire.codec import codec

pytestmark = pytest.mark.integration


def test_emit_file(tmp_path, kafka_config, topics, monkeypatch):
    monkeypatch.setenv("METERGATE_KAFKA_BOOTSTRAP", kafka_config["bootstrap.servers"])
    monkeypatch.setenv("METERGATE_KAFKA_TOPIC_PREFIX", topics.prefix)
    good = {"customer_id": "acme", "meter": "api_calls", "quantity": "2", "timestamp": "2026-11-01T10:00:00Z"}
    lines = [
        json.dumps({**good, "event_id": "a"}),
        json.dumps({**good, "event_id": "b", "quantity": "-5"}),
        "{not json",
        json.dumps({**good, "event_id": "c", "timestamp": "2026-11-01T10:00:00"}),
        json.dumps({k: v for k, v in {**good, "event_id": "d"}.items() if k != "meter"}),
        "",
        json.dumps({**good, "event_id": "e", "quantity": "0.5"}),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")

    result = CliRunner().invoke(main, ["emit", "--file", str(path), "--no-progress"])

    assert result.exit_code == 1, result.output
    assert "sent 2, rejected 4 of 6 events" in result.output
    assert "line 2: quantity: must be >= 0, got -5" in result.output
    assert "line 3: not JSON" in result.output
    assert "line 4: timestamp: must be timezone-aware" in result.output
    assert "line 5: meter: required field is missing" in result.output
    sent = [
        codec(UsageEvent).decode(value)
        for _, value, _, _ in read_topic(kafka_config, topics.events, expect=2)
    ]
    assert sorted((e.event_id, e.quantity) for e in sent) == [("a", Decimal(2)), ("e", Decimal("0.5"))]
    assert {e.source for e in sent} == {"metergate-emit"}


def test_emit_one_event_from_flags(kafka_config, topics, monkeypatch):
    monkeypatch.setenv("METERGATE_KAFKA_TOPIC_PREFIX", topics.prefix)
    args = [
        "emit",
        "--bootstrap",
        kafka_config["bootstrap.servers"],
        "--customer",
        "acme",
        "--meter",
        "seats",
        "--quantity",
        "3",
        "--event-id",
        "seat-1",
        "--property",
        "plan=pro",
        "--timestamp",
        "2026-11-02T08:00:00+01:00",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "sent seat-1: acme seats 3 at 2026-11-02T07:00:00+00:00" in result.output
    [(key, value, _, _)] = read_topic(kafka_config, topics.events, expect=1)
    event = codec(UsageEvent).decode(value)
    assert key == b"acme" and event.properties == {"plan": "pro"} and event.event_id == "seat-1"


def test_emit_invalid_flags_send_nothing(kafka_config, topics, monkeypatch):
    monkeypatch.setenv("METERGATE_KAFKA_TOPIC_PREFIX", topics.prefix)
    args = [
        "emit",
        "--bootstrap",
        kafka_config["bootstrap.servers"],
        "--customer",
        "acme",
        "--meter",
        "seats",
        "--quantity",
        "NaN",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2  # bad input: one line, exit code 2, like every command
    assert "event rejected, nothing sent: quantity: must be a finite number" in result.output
    assert read_topic(kafka_config, topics.events, idle_s=1.0) == []
