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
    try:
        assert record.load() is None
        record.save(RECORDED)
        assert record.load() == RECORDED
    finally:
        record.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "membership.json",
        "membership.lock",
    ]  # no partial file


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
    record = MembershipFile(path)
    try:
        assert record.load() is None
    finally:
        record.close()


def test_only_the_process_holding_the_data_dirs_membership_lock_reads_or_writes_it(tmp_path: Path) -> None:
    first = MembershipFile(tmp_path / "membership.json")
    first.save(RECORDED)
    second = MembershipFile(tmp_path / "membership.json")  # another process on the same data dir
    try:
        assert first.owned and not second.owned
        assert second.load() is None
        second.save(RECORDED)  # ignored
        first.close()
        third = MembershipFile(tmp_path / "membership.json")  # the next process, once the first is gone
        assert third.owned and third.load() == RECORDED
        third.close()
    finally:
        first.close()
        second.close()
