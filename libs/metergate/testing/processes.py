"""Process checks for tests that must prove nothing was left running."""

from __future__ import annotations

from pathlib import Path


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def descendants(roots: list[int]) -> set[int]:
    """Every live process under `roots`, the roots included (postgres forks helpers and backends)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found = {pid for pid in roots if alive(pid)}
    grew = True
    while grew:
        new = {pid for pid, parent in parents.items() if parent in found and pid not in found and alive(pid)}
        found |= new
        grew = bool(new)
    return found
