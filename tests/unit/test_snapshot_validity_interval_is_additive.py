"""EntitlementSnapshot's validity interval is an additive schema change: a record written with the
previous schema (schemas/history/EntitlementSnapshot.v1.avsc) still reads, with no interval, and
the interval round-trips through the current one."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import pytest

from metergate.domain.records import EntitlementSnapshot
from metergate.wire.codec import MAGIC, _fingerprint, codec

pytestmark = pytest.mark.unit

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
WHEN = datetime(2026, 11, 15, tzinfo=UTC)


def test_the_interval_round_trips_and_a_record_of_the_previous_schema_still_reads():
    snapshot = EntitlementSnapshot(
        customer_id="acme",
        subscription_id="sub-1",
        plan_key="scale",
        plan_version=1,
        version=12,
        updated_at=WHEN,
        valid_from=WHEN,
        valid_to=datetime(2026, 12, 1, tzinfo=UTC),
    )
    snapshots = codec(EntitlementSnapshot)
    assert snapshots.decode(snapshots.encode(snapshot)) == snapshot

    old = fastavro.parse_schema(json.loads((SCHEMAS / "history" / "EntitlementSnapshot.v1.avsc").read_text()))
    body = io.BytesIO()
    datum = snapshot.model_dump(exclude={"valid_from", "valid_to"})
    fastavro.schemaless_writer(body, old, datum)
    written_before = MAGIC + _fingerprint(old) + body.getvalue()
    assert written_before[2:10] != snapshots.schema.fingerprint  # another writer schema
    read = snapshots.decode(written_before)
    assert read == snapshot.model_copy(update={"valid_from": None, "valid_to": None})
