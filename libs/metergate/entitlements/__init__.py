"""The entitlement check: local state from the compacted topics, answered in-process or by the sidecar.

`from metergate.entitlements import Entitlements` (see `metergate.entitlements.service`).
"""

from __future__ import annotations

from metergate.domain.entitlements import Decision, Reason, Source
from metergate.entitlements.service import Entitlements, Receipt
from metergate.entitlements.settings import EntitlementsSettings

__all__ = ["Decision", "Entitlements", "EntitlementsSettings", "Reason", "Receipt", "Source"]
