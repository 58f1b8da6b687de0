"""An audit entry lists the values a change changed, `path: before -> after`, a subscription's
versions by their index (pure: the entry as the admin API and the CLI show it)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from metergate.provisioning import AuditEntry

pytestmark = pytest.mark.unit

AT = datetime(2026, 11, 15, tzinfo=UTC)


def version(number: int, plan: str, start: str, end: str | None, add_ons: dict) -> dict:  # type: ignore[type-arg]
    return {
        "number": number,
        "plan": plan,
        "effective_from": start,
        "effective_to": end,
        "add_ons": add_ons,
        "overrides": {"base_fee": None, "pricing": {}},
    }


def test_a_change_lists_the_closed_version_and_the_new_one():
    before = [version(1, "growth", "2026-11-01", None, {"extra_calls": 2})]
    after = [
        version(1, "growth", "2026-11-01", "2026-11-15", {"extra_calls": 2}),
        version(2, "scale", "2026-11-15", None, {}),
    ]
    entry = AuditEntry(AT, "crm", "change", "subscription", "acme", before, after)
    assert entry.changes == [
        "0.effective_to: none -> 2026-11-15",
        "1.add_ons: none -> {}",
        "1.effective_from: none -> 2026-11-15",
        "1.number: none -> 2",
        "1.overrides.pricing: none -> {}",
        "1.plan: none -> scale",
    ]


def test_a_creation_lists_every_value_and_the_same_twice_lists_nothing():
    created = AuditEntry(
        AT, "cli:ops", "create", "customer", "acme", None, {"customer_id": "acme", "name": None}
    )
    assert created.changes == ["customer_id: none -> acme"]
    assert AuditEntry(AT, "crm", "change", "customer", "acme", {"a": {"b": 1}}, {"a": {"b": 1}}).changes == []
    assert AuditEntry(AT, "crm", "change", "customer", "acme", {"a": [1, 2]}, {"a": [1, 3]}).changes == [
        "a: [1, 2] -> [1, 3]"
    ]
