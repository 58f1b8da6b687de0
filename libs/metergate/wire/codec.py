"""The one codec of every metergate topic: Avro single-object encoding over fastavro.

Wire format of every record value (Avro specification, "Single object encoding"):

    0xC3 0x01 | CRC-64-AVRO fingerprint of the writer schema (8 bytes, little-endian) | Avro binary body

The fingerprint travels in every record, so a reader knows which schema wrote it: an unknown
fingerprint, a record of another kind, or a body that does not parse is rejected with a reason code
(`not_avro`, `unknown_schema`, `unexpected_schema`, `undecodable`) instead of being misread.

Schemas are files in `schemas/` (the current version of each record) and `schemas/history/`
(older writer versions still readable). They are parsed once, at first use. A reader always reads
into the current schema, so an additive change (a new field with a default) stays readable both ways.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Generic, TypeVar

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from pydantic import BaseModel, ValidationError

from metergate.domain import records
from metergate.errors import DecodeError

MAGIC = b"\xc3\x01"
HEADER_SIZE = 10

M = TypeVar("M", bound=BaseModel)

#: record name in the schemas -> model
MODELS: dict[str, type[BaseModel]] = {
    "UsageEvent": records.UsageEvent,
    "MeterDefinition": records.MeterDefinition,
    "EntitlementSnapshot": records.EntitlementSnapshot,
    "UsageAggregate": records.UsageAggregate,
    "LimitEvent": records.LimitEvent,
    "DuplicateReceipt": records.DuplicateReceipt,
    "DeadLetter": records.DeadLetter,
    "CreditBalance": records.CreditBalance,
}


def schemas_dir() -> Path:
    """The package `metergate.schemas` (`schemas/` of the source tree, mapped in pyproject; package
    data of an installed wheel), or the directory named by METERGATE_SCHEMAS_DIR."""
    configured = os.environ.get("METERGATE_SCHEMAS_DIR")
    if configured:
        return Path(configured)
    return Path(str(resources.files("metergate.schemas")))


@dataclass(frozen=True)
class WriterSchema:
    name: str  # full name, e.g. io.metergate.UsageEvent
    fingerprint: bytes
    parsed: Any


@dataclass(frozen=True)
class SchemaRegistry:
    current: dict[str, WriterSchema]  # short record name -> current schema
    by_fingerprint: dict[bytes, WriterSchema]


def _fingerprint(parsed: Any) -> bytes:
    """The 8 fingerprint bytes of the single-object header, in the spec's (little-endian) order.

    fastavro's hex digest already lists the bytes in that order (it is the little-endian encoding
    of the 64-bit CRC), so the bytes are the hex digest as written: reversing them is what Apache
    Avro Java's `BinaryMessageDecoder` refuses.
    """
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


def _load(path: Path) -> WriterSchema:
    raw = json.loads(path.read_text())
    parsed: dict[str, Any] = fastavro.parse_schema(raw)  # type: ignore[assignment]  # a record schema
    return WriterSchema(name=parsed["name"], fingerprint=_fingerprint(parsed), parsed=parsed)


@cache
def registry() -> SchemaRegistry:
    """The schemas of this installation, parsed once."""
    return load_registry(schemas_dir())


def load_registry(base: Path) -> SchemaRegistry:
    """Parse `base/*.avsc` (current versions) and `base/history/*.avsc` (older writers)."""
    if not base.is_dir():
        raise FileNotFoundError(f"Avro schemas not found at {base} (set METERGATE_SCHEMAS_DIR)")
    current: dict[str, WriterSchema] = {}
    by_fingerprint: dict[bytes, WriterSchema] = {}
    for path in sorted(base.glob("*.avsc")):
        schema = _load(path)
        current[schema.name.rsplit(".", 1)[-1]] = schema
        by_fingerprint[schema.fingerprint] = schema
    history = base / "history"
    if history.is_dir():
        for path in sorted(history.glob("*.avsc")):
            schema = _load(path)
            by_fingerprint.setdefault(schema.fingerprint, schema)
    missing = set(MODELS) - set(current)
    if missing:
        raise FileNotFoundError(f"schemas missing from {base}: {sorted(missing)}")
    return SchemaRegistry(current=current, by_fingerprint=by_fingerprint)


class Codec(Generic[M]):
    """Encoder/decoder of one record kind. Get one with `codec(Model)`; it is cheap to share."""

    def __init__(self, model: type[M], name: str, schemas: SchemaRegistry | None = None) -> None:
        self.model = model
        self.name = name
        self.registry = registry() if schemas is None else schemas
        self.schema = self.registry.current[name]
        self._header = MAGIC + self.schema.fingerprint

    # -- encoding --------------------------------------------------------------------------------
    def encode(self, record: M) -> bytes:
        return self.encode_dict(record.model_dump())

    def encode_dict(self, datum: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        buffer.write(self._header)
        fastavro.schemaless_writer(buffer, self.schema.parsed, datum)
        return buffer.getvalue()

    # -- decoding --------------------------------------------------------------------------------
    def decode_dict(self, data: bytes | None) -> dict[str, Any]:
        """Decode to a plain dict (fast path); raises DecodeError with a reason code."""
        if data is None or len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise DecodeError(
                f"not an Avro single-object record (expected header C3 01, got {bytes(data or b'')[:2]!r})",
                reason="not_avro",
            )
        writer = self.registry.by_fingerprint.get(bytes(data[2:HEADER_SIZE]))
        if writer is None:
            raise DecodeError(
                f"unknown schema fingerprint {bytes(data[2:HEADER_SIZE]).hex()} (not in schemas/ or schemas/history/)",
                reason="unknown_schema",
            )
        if writer.name != self.schema.name:
            raise DecodeError(
                f"expected a {self.schema.name} record, got {writer.name}", reason="unexpected_schema"
            )
        body = io.BytesIO(data[HEADER_SIZE:])
        try:
            datum = fastavro.schemaless_reader(
                body, writer.parsed, None if writer is self.schema else self.schema.parsed
            )
        except Exception as exc:  # fastavro raises many types for a corrupt body
            raise DecodeError(f"corrupt {self.name} body: {exc}", reason="undecodable") from None
        trailing = len(data) - HEADER_SIZE - body.tell()
        if trailing:
            raise DecodeError(
                f"corrupt {self.name} record: {trailing} trailing byte{'s' if trailing != 1 else ''} after "
                "a complete body (one record per message, nothing after it)",
                reason="undecodable",
            )
        assert isinstance(datum, dict)
        return datum

    def decode(self, data: bytes | None) -> M:
        datum = self.decode_dict(data)
        try:
            return self.model.model_validate(datum)
        except ValidationError as exc:
            if self.model is records.UsageEvent:
                raise records.invalid_event_from(exc) from None
            raise DecodeError(
                f"invalid {self.name}: {exc.errors()[0]['msg']}", reason="invalid_record"
            ) from None


@cache
def _codec(model: type[BaseModel]) -> Codec[Any]:
    for name, candidate in MODELS.items():
        if candidate is model:
            return Codec(model, name)
    raise KeyError(f"no schema for {model.__name__}")


def codec(model: type[M]) -> Codec[M]:
    """The codec of a record model, e.g. `codec(UsageEvent).encode(event)`."""
    return _codec(model)
