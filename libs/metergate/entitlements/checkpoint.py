"""The disk checkpoint of the local state: what a restarted check answers from while Kafka is unreachable.

One JSON file, rewritten whole (written to a temporary file in the same directory, fsynced, then
renamed over the old one, so a crash leaves the old or the new file, never half of one), mode 0600.
Snapshots are kept as the Avro records they arrived as (one decoder for the topic and the file);
aggregates, limit-event usage and pending usage as exact decimal strings. `as_of` is the moment the
state was last known to reflect the topics; a state loaded from the file answers with
`source: cache` and that `as_of` until the broker has been read again.

At start the topics are read from the beginning as always; a checkpointed value is replaced by a
newer version from the topics and never replaces one (highest version wins both ways).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from metergate.domain.records import EntitlementSnapshot
from metergate.entitlements.state import EntitlementState, PendingUsage
from metergate.errors import InvalidInput
from metergate.wire.codec import codec

log = logging.getLogger(__name__)

FORMAT = 1


def dump(state: EntitlementState, as_of: datetime | None) -> dict[str, Any]:
    """A JSON-ready copy of the state (taken under no lock: each dict is copied at once)."""
    snapshots = dict(state.snapshot_bytes)
    aggregates = dict(state.aggregates)
    limits = dict(state.limit_usage)
    pending = dict(state.pending)
    reported = list(state.reported)[-100_000:]
    return {
        "format": FORMAT,
        "as_of": None if as_of is None else as_of.isoformat(),
        "snapshots": [base64.b64encode(raw).decode() for raw in snapshots.values()],
        "aggregates": [
            [c, m, p.isoformat(), v, f"{value:f}"] for (c, m, p), (v, value) in aggregates.items()
        ],
        "limits": [[c, f, p.isoformat(), f"{value:f}"] for (c, f, p), value in limits.items()],
        "pending": [
            [
                c,
                m,
                p.isoformat(),
                u.event_id,
                u.partition,
                u.offset,
                f"{u.quantity:f}",
                u.period_end.isoformat(),
            ]
            for (c, m, p), items in pending.items()
            for u in items
        ],
        "reported": reported,
    }


def write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o600)
            json.dump(document, handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load(path: Path, state: EntitlementState) -> datetime | None:
    """Fill `state` from the checkpoint at `path`; returns its `as_of` (None: no usable checkpoint)."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("entitlements checkpoint %s unreadable (%s): starting without it", path, exc)
        return None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        log.warning("entitlements checkpoint %s has an unknown format: starting without it", path)
        return None
    decoder = codec(EntitlementSnapshot)
    for encoded in document["snapshots"]:
        raw = base64.b64decode(encoded)
        try:
            snapshot = decoder.decode(raw)
        except InvalidInput as exc:
            log.warning("entitlements checkpoint: skipped a snapshot (%s)", exc)
            continue
        state.apply_snapshot(snapshot.customer_id, snapshot, raw)
    for customer, meter, start, version, value in document["aggregates"]:
        key = (customer, meter, datetime.fromisoformat(start))
        current = state.aggregates.get(key)
        if current is None or current[0] < version:
            state.aggregates[key] = (int(version), Decimal(value))
    for customer, feature, start, value in document["limits"]:
        state.limit_usage[(customer, feature, datetime.fromisoformat(start))] = Decimal(value)
    for event_id in document["reported"]:
        state.reported[event_id] = None
    for customer, meter, start, event_id, partition, offset, quantity, end in document["pending"]:
        key = (customer, meter, datetime.fromisoformat(start))
        item = PendingUsage(
            event_id, int(partition), int(offset), Decimal(quantity), datetime.fromisoformat(end)
        )
        state.restore_pending(key, item)
    as_of = document.get("as_of")
    return None if as_of is None else datetime.fromisoformat(as_of)
