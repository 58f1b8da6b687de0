"""The worker's group membership, recorded in its data dir so that the next worker process on that
data dir can take it back (services/metering/faust_adapter.py, "Resuming a group membership").

`membership.json`, replaced atomically after every assignment: group id, member id, generation,
assignment protocol, the assignment bytes (base64) and whether the member was the group's leader. A
record that cannot be read is ignored (the worker then joins as a new member): it only ever saves
time, never decides what is counted.

Only one live process may use a recorded member id: the record is read and written only by the
holder of an flock on `membership.lock` beside it, taken for the life of the process (the kernel
releases it when the process dies). A second process on the same data dir (even one whose state
directory was deleted and created anew meanwhile) does not get it, and joins as a new member.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import IO

from metergate_services.metering.faust_adapter import Membership

log = logging.getLogger(__name__)


class MembershipFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: IO[str] | None = self._own(path.with_name(path.stem + ".lock"))

    @staticmethod
    def _own(path: Path) -> IO[str] | None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            log.warning("%s is held by another process: this worker joins its group as a new member", path)
            return None
        return handle

    @property
    def owned(self) -> bool:
        return self._lock is not None

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def load(self) -> Membership | None:
        if not self.owned:
            return None
        try:
            state = json.loads(self.path.read_text())
            return Membership(
                group_id=str(state["group_id"]),
                member_id=str(state["member_id"]),
                generation=int(state["generation"]),
                protocol=str(state["protocol"]),
                assignment=base64.b64decode(state["assignment"]),
                leader=bool(state["leader"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "%s: unreadable (%s), ignored: the worker joins its group as a new member", self.path, exc
            )
            return None

    def save(self, membership: Membership) -> None:
        if not self.owned:
            return
        state = {
            "group_id": membership.group_id,
            "member_id": membership.member_id,
            "generation": membership.generation,
            "protocol": membership.protocol,
            "assignment": base64.b64encode(membership.assignment).decode(),
            "leader": membership.leader,
        }
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(state))
        os.replace(partial, self.path)
