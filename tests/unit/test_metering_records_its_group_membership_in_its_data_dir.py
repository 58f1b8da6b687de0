"""The group membership a metering worker records in its data dir reads back as written; a record
that cannot be read is ignored (the worker then joins its group as a new member)."""

from __future__ import annotations

from pathlib import Path

import pytest

from metergate_services.metering.faust_adapter import Membership
from metergate_services.metering.membership import MembershipFile

RECORDED = Membership(
    group_id="acme.metergate-metering",
    member_id="faust-0.15.3-5f0c",
    generation=7,
    protocol="faust",
    assignment=b"\x00\x01\x00\x00\x00\x01\x00\x0bacme.events\xff\x00",
    leader=True,
)


def test_a_recorded_membership_reads_back_as_written(tmp_path: Path) -> None:
    record = MembershipFile(tmp_path / "membership.json")
    assert record.load() is None
    record.save(RECORDED)
    assert record.load() == RECORDED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["membership.json"]  # no partial file left


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{",
        '{"group_id": "g"}',
        '{"group_id": "g", "member_id": "m", "generation": "x", '
        '"protocol": "faust", "assignment": "AAA=", "leader": false}',
        "[]",
    ],
)
def test_an_unreadable_record_is_ignored(tmp_path: Path, content: str) -> None:
    path = tmp_path / "membership.json"
    path.write_text(content)
    assert MembershipFile(path).load() is None
