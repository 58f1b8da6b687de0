"""Each customer's terms over time, as read from `entitlements.snapshots`: one rule for every reader.

A snapshot may carry the interval its terms are in force, `[valid_from, valid_to)` (the subscription
relay's do; a catalog file's do not: in force always). Readers need two answers:

- `newest(customer)`: the highest `version` read for the customer, whatever order records arrive
  in (what the entitlement check and a catalog-file deployment apply);
- `at(customer, ms)`: the terms in force at a moment, the highest version among the customer's
  snapshots whose interval holds it (`metergate.domain.subscriptions.snapshot_in_force`), so usage is
  metered and priced under the terms of its own time, whenever it is read: a late event or a replay
  after an upgrade is counted and billed as it was before.

`of(customer)` gives every snapshot held for the customer (highest version first), for a reader that
cuts a period where the terms change (`subscriptions.fees_of_snapshots`).

Terms with the same start are one version of the customer's terms (one key on the topic,
`records.snapshot_key`): the highest version replaces the others, so terms re-sent with an end
(a change scheduled after them) end where they now end, whatever else has arrived yet.

A customer whose snapshots are all undated (the common case) costs one dict lookup in `at`: the
dated history is kept only from the first dated snapshot on. Updates replace a customer's list
instead of changing it, so a reader on another thread always sees a whole list.
"""

from __future__ import annotations

import math

from metergate.domain.metering import millis
from metergate.domain.records import EntitlementSnapshot

#: one dated snapshot: (from ms, to ms, version, snapshot); unbounded sides are -inf / +inf
Dated = tuple[float, float, int, EntitlementSnapshot]


class DatedTerms:
    __slots__ = ("dated", "newest_by_customer")

    def __init__(self) -> None:
        self.newest_by_customer: dict[str, EntitlementSnapshot] = {}
        #: customers with a dated snapshot -> every snapshot of theirs, highest version first
        self.dated: dict[str, list[Dated]] = {}

    def __len__(self) -> int:
        return len(self.newest_by_customer)

    def remember(self, snapshot: EntitlementSnapshot) -> None:
        """Keep `snapshot` (the customer's newest when its version is, or ties, the highest read)."""
        customer = snapshot.customer_id
        known = self.newest_by_customer.get(customer)
        if known is None or snapshot.version >= known.version:
            self.newest_by_customer[customer] = snapshot
        dated = self.dated.get(customer)
        if dated is None and (snapshot.valid_from is not None or snapshot.valid_to is not None):
            dated = [] if known is None else [_interval(known)]
        if dated is not None:
            entry = _interval(snapshot)
            same_start = [held for held in dated if held[0] == entry[0]]
            if any(held[2] > entry[2] for held in same_start):
                return  # an older copy of terms held in a newer version (one key on the topic)
            kept = [held for held in dated if held[0] != entry[0]]
            self.dated[customer] = sorted([*kept, entry], key=lambda held: -held[2])

    def forget(self, customer_id: str) -> None:
        """A tombstone: nothing is known of the customer any more."""
        self.newest_by_customer.pop(customer_id, None)
        self.dated.pop(customer_id, None)

    def newest(self, customer_id: str) -> EntitlementSnapshot | None:
        return self.newest_by_customer.get(customer_id)

    def at(self, customer_id: str, at_ms: int) -> EntitlementSnapshot | None:
        """The customer's terms in force at `at_ms` (milliseconds since the epoch, UTC)."""
        dated = self.dated.get(customer_id)
        if dated is None:
            return self.newest_by_customer.get(customer_id)
        for start, end, _version, snapshot in dated:  # highest version first
            if start <= at_ms < end:
                return snapshot
        return None

    def of(self, customer_id: str) -> tuple[EntitlementSnapshot, ...]:
        """Every snapshot held for the customer, highest version first."""
        dated = self.dated.get(customer_id)
        if dated is not None:
            return tuple(entry[3] for entry in dated)
        newest = self.newest_by_customer.get(customer_id)
        return () if newest is None else (newest,)


def _interval(snapshot: EntitlementSnapshot) -> Dated:
    start = -math.inf if snapshot.valid_from is None else millis(snapshot.valid_from)
    end = math.inf if snapshot.valid_to is None else millis(snapshot.valid_to)
    return start, end, snapshot.version, snapshot
