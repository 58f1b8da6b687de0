"""The codec frames every record exactly as the Avro specification's "Single object encoding" says.

Everything the test compares with is computed here from the specification, not by fastavro:

- the Parsing Canonical Form of each schema file (rules PRIMITIVES, FULLNAMES, STRIP, ORDER,
  STRINGS, INTEGERS, WHITESPACE);
- its CRC-64-AVRO fingerprint (the spec's table algorithm, EMPTY = 0xc15d213aa4d7a795);
- the header `C3 01` + the fingerprint as 8 little-endian bytes;
- the Avro binary body of one UsageEvent, written by hand (zigzag varints, length-prefixed strings
  and bytes, union branch indexes, map blocks), compared with the codec's bytes one for one.

Apache Avro Java's `BinaryMessageEncoder` writes `c3 01 60 28 c0 cc 0f dd e9 db` before a
UsageEvent (issue 8): the same ten bytes must come out of the codec and of this computation.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from metergate.domain.records import UsageEvent
from metergate.errors import DecodeError
from metergate.wire.codec import Codec, codec, load_registry, schemas_dir

pytestmark = pytest.mark.unit

JAVA_USAGE_EVENT_HEADER = bytes.fromhex("c3 01 60 28 c0 cc 0f dd e9 db")

# -- CRC-64-AVRO, from the specification -------------------------------------------------------------
EMPTY = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY & -(fp & 1))
        table.append(fp)
    return table


TABLE = _table()


def crc64_avro(data: bytes) -> int:
    fp = EMPTY
    for byte in data:
        fp = (fp >> 8) ^ TABLE[(fp ^ byte) & 0xFF]
    return fp


# -- Parsing Canonical Form, from the specification --------------------------------------------------
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
KEPT = ("name", "type", "fields", "symbols", "items", "values", "size")  # STRIP + ORDER


def _fullname(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def canonical(schema: Any, namespace: str | None = None, defined: set[str] | None = None) -> str:
    defined = set() if defined is None else defined
    if isinstance(schema, str):
        return json.dumps(schema if schema in PRIMITIVES else _fullname(schema, namespace))
    if isinstance(schema, list):
        return "[" + ",".join(canonical(branch, namespace, defined) for branch in schema) + "]"
    kind = schema["type"]
    if kind in PRIMITIVES or (
        isinstance(kind, str) and kind not in {"record", "enum", "fixed", "array", "map"}
    ):
        return canonical(kind, namespace, defined)  # {"type": "long", "logicalType": ...} -> "long"
    if not isinstance(kind, str):
        return canonical(kind, namespace, defined)
    parts = []
    if kind in {"record", "enum", "fixed"}:
        name = _fullname(schema["name"], schema.get("namespace", namespace))
        if name in defined:
            return json.dumps(name)
        defined.add(name)
        namespace = name.rsplit(".", 1)[0] if "." in name else None
        parts.append(f'"name":{json.dumps(name)}')
    parts.append(f'"type":{json.dumps(kind)}')
    if kind == "record":
        fields = ",".join(
            f'{{"name":{json.dumps(f["name"])},"type":{canonical(f["type"], namespace, defined)}}}'
            for f in schema["fields"]
        )
        parts.append(f'"fields":[{fields}]')
    if kind == "enum":
        parts.append(f'"symbols":{json.dumps(schema["symbols"], separators=(",", ":"))}')
    if kind == "array":
        parts.append(f'"items":{canonical(schema["items"], namespace, defined)}')
    if kind == "map":
        parts.append(f'"values":{canonical(schema["values"], namespace, defined)}')
    if kind == "fixed":
        parts.append(f'"size":{int(schema["size"])}')
    return "{" + ",".join(parts) + "}"


def header_of(path: Path) -> bytes:
    form = canonical(json.loads(path.read_text()))
    return b"\xc3\x01" + crc64_avro(form.encode()).to_bytes(8, "little")


# -- Avro binary, from the specification --------------------------------------------------------------
def zigzag(value: int) -> bytes:
    value = (value << 1) ^ (value >> 63)
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def string(text: str) -> bytes:
    data = text.encode()
    return zigzag(len(data)) + data


def test_crc64_avro_of_nothing_is_the_empty_value():
    assert crc64_avro(b"") == EMPTY
    # the spec's canonical form of a primitive is its quoted name
    assert canonical({"type": "string"}) == '"string"'


def test_every_schema_header_is_the_fingerprint_of_its_canonical_form_little_endian():
    paths = sorted(schemas_dir().glob("*.avsc"))
    assert {p.stem for p in paths} >= {"UsageEvent", "LimitEvent", "UsageAggregate", "DeadLetter"}
    registry = load_registry(schemas_dir())
    for path in paths:
        name = json.loads(path.read_text())["name"]
        assert b"\xc3\x01" + registry.current[name].fingerprint == header_of(path), path.name


def test_usage_event_header_is_what_apache_avro_java_writes():
    assert header_of(schemas_dir() / "UsageEvent.avsc") == JAVA_USAGE_EVENT_HEADER


def test_one_usage_event_is_encoded_byte_for_byte_as_the_spec_says():
    event = UsageEvent(
        event_id="e-1",
        customer_id="acme",
        subject_id=None,
        meter="api_calls",
        quantity=Decimal("2.5"),
        timestamp=datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC),
        properties={"region": "eu"},
        source="sdk",
    )
    millis = 1772366400250  # 2026-03-01T12:00:00.250Z in milliseconds since the epoch
    assert int(event.timestamp.timestamp() * 1000) == millis
    unscaled = 2_500_000_000  # 2.5 at scale 9, big-endian two's complement, minimal length
    quantity = unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)
    body = (
        string("e-1")
        + string("acme")
        + zigzag(0)  # subject_id: union branch 0 (null)
        + string("api_calls")
        + zigzag(len(quantity))
        + quantity
        + zigzag(millis)
        + zigzag(1)  # properties: one block of one entry
        + string("region")
        + string("eu")
        + zigzag(0)  # end of the map
        + zigzag(1)  # source: union branch 1 (string)
        + string("sdk")
    )
    encoded = codec(UsageEvent).encode(event)
    assert encoded.hex(" ") == (JAVA_USAGE_EVENT_HEADER + body).hex(" ")
    assert codec(UsageEvent).decode(JAVA_USAGE_EVENT_HEADER + body) == event


def test_bytes_after_a_complete_body_are_refused():
    encoded = codec(UsageEvent).encode(
        UsageEvent(
            event_id="e-1",
            customer_id="acme",
            meter="api_calls",
            quantity=Decimal(1),
            timestamp=datetime(2026, 3, 1, tzinfo=UTC),
        )
    )
    with pytest.raises(DecodeError) as error:
        codec(UsageEvent).decode(encoded + b"\x00\x02")
    assert error.value.reason == "undecodable"
    assert str(error.value) == (
        "corrupt UsageEvent record: 2 trailing bytes after a complete body (one record per message, nothing after it)"
    )


def test_an_old_writer_version_in_history_is_still_read(tmp_path):
    """A record written with an older schema (here: UsageEvent before `source` existed) is recognised
    by its fingerprint in schemas/history/ and read into the current model."""
    base = tmp_path / "schemas"
    shutil.copytree(schemas_dir(), base, ignore=shutil.ignore_patterns("history", "__pycache__", "*.py"))
    old = json.loads((base / "UsageEvent.avsc").read_text())
    old["fields"] = [f for f in old["fields"] if f["name"] != "source"]
    (base / "history").mkdir()
    (base / "history" / "UsageEvent.v0.avsc").write_text(json.dumps(old))

    old_header = header_of(base / "history" / "UsageEvent.v0.avsc")
    assert old_header != header_of(base / "UsageEvent.avsc")
    unscaled = 10**9
    body = (
        string("old-1")
        + string("acme")
        + zigzag(0)
        + string("api_calls")
        + zigzag(5)
        + unscaled.to_bytes(5, "big", signed=True)
        + zigzag(1772366400000)
        + zigzag(0)  # no properties
    )
    reader = Codec(UsageEvent, "UsageEvent", load_registry(base))
    event = reader.decode(old_header + body)
    assert (event.event_id, event.quantity, event.source) == ("old-1", Decimal(1), None)
    assert event.timestamp == datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_rating_fast_reader_refuses_trailing_bytes_like_the_codec():
    from metergate.domain.records import UsageAggregate
    from metergate.wire.fastwire import read_aggregate
    from tests.unit.test_records_round_trip import EXAMPLES

    encoded = codec(UsageAggregate).encode(EXAMPLES["UsageAggregate"])  # type: ignore[arg-type]
    assert read_aggregate(encoded).value == EXAMPLES["UsageAggregate"].value  # type: ignore[attr-defined]
    with pytest.raises(DecodeError) as error:
        read_aggregate(encoded + b"\x00")
    assert error.value.reason == "undecodable"
    assert "1 trailing byte after a complete body" in str(error.value)
