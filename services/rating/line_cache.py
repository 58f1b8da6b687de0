"""The committed lines of recently rated aggregate keys, kept in memory between batches.

Valid because a key's lines are written only by the consumer that owns the key's partition, and
that ownership is checked in every transaction (the offsets fence). So the cache is filled only
after a COMMIT, dropped for a partition when it is revoked, and dropped whole when the fence
reports that someone else moved our offsets. A miss simply reads PostgreSQL. Bounded (LRU).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Mapping
from decimal import Decimal
from typing import Any

from metergate.domain.rating import Line

_NONE: dict[str, Any] = {}  # shared, never changed: take() copies lines, reads credits
LineState = tuple[dict[str, Line], dict[str, dict[str, Decimal]]]  # lines by line_key, credit sources


class LineCache:
    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self._entries: OrderedDict[str, tuple[int, dict[str, Line], dict[str, dict[str, Decimal]]]] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def take(
        self, keys: Collection[str]
    ) -> tuple[dict[str, dict[str, Line]], dict[str, dict[str, Decimal]], set[str]]:
        """Copies of the cached keys' lines and credit sources (the fold may change them), and the misses."""
        lines: dict[str, dict[str, Line]] = {}
        credits: dict[str, dict[str, Decimal]] = {}
        missing: set[str] = set()
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                missing.add(key)
                continue
            lines[key] = dict(entry[1])  # recency: a key taken is stored again when its batch commits
            if entry[2]:
                credits.update(entry[2])
        return lines, credits, missing

    def store(
        self,
        partitions: Mapping[str, int],
        lines: Mapping[str, dict[str, Line]],
        credits: Mapping[str, dict[str, Decimal]],
    ) -> None:
        """Remember the committed state of `partitions`' keys (key -> partition)."""
        if self.max_keys <= 0:
            return
        entries = self._entries
        move = entries.move_to_end
        with_credit = credits.keys()
        for key, partition in partitions.items():
            key_lines = lines.get(key, _NONE)
            if with_credit.isdisjoint(key_lines):  # the common case: no line of the key uses credit
                entries[key] = (partition, key_lines, _NONE)
            else:
                entries[key] = (partition, key_lines, {lk: credits[lk] for lk in key_lines if lk in credits})
            move(key)
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)

    def drop_partitions(self, partitions: Collection[int]) -> None:
        gone = set(partitions)
        for key in [key for key, entry in self._entries.items() if entry[0] in gone]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()
