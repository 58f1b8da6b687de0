"""The worker's group membership, recorded in its data dir so that the next worker process on that
data dir can take it back (services/metering/faust_adapter.py, "Resuming a group membership").

`membership.json`, replaced atomically after every assignment: group id, member id, generation,
assignment protocol, the assignment bytes (base64) and whether the member was the group's leader. A
record that cannot be read is ignored (the worker then joins as a new member): it only ever saves
time, never decides what is counted.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path

from metergate_services.metering.faust_adapter import Membership

log = logging.getLogger(__name__)


class MembershipFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Membership | None:
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
