"""Every error metergate raises on purpose.

    MetergateError
    ├── InvalidInput                  bad input: somebody else's fault; reported, never fatal to a worker
    │   ├── InvalidEvent              a usage event fails validation (field + reason); goes to the DLQ
    │   ├── DecodeError               bytes that are not a record we know (reason code + message)
    │   ├── CatalogError              a catalog file is wrong (path inside the file + reason)
    │   ├── GrantError                a credit grant that cannot be applied (domain/ledger.py)
    │   ├── PricingError              a price that cannot be applied to a total (domain/pricing.py)
    │   ├── SubscriptionError         a subscription change that cannot be applied (field + reason)
    │   └── Problem                   a request the entitlements sidecar refuses (HTTP status + reason)
    ├── StaleAssignment               stored offsets moved under a rating consumer: another one owns them
    │                                 now (db/rating_store.py); the consumer stops and rejoins
    ├── IntegrityFault                the database disagrees with the fold computed from it: ours, fatal
    │                                 (db/rating_store.py)
    ├── DeliveryError                 Kafka did not accept a record we produced
    ├── StackError                    the embedded stack could not start or stop
    ├── ConfigurationError            settings missing or that cannot work together (settings.py)
    │   └── NotConfigured             a service the process needs is not named and no dev stack runs
    └── BadSetup                      (cli/reporting.py, also a click error) one line, exit code 2

Bad input carries a machine-readable `reason` code (it becomes the DLQ reason) and a human message
that names what was wrong, where, and what would be right. Everything outside `InvalidInput` is an
operational condition or a fault of ours and stops the process loudly. The one deliberate exception
not in the tree is `metergate.wire.fastwire._NotFast`, private control flow (the fast reader hands the
record to the codec) that never leaves its module; `tests/unit/test_error_tree.py` enforces the rest.
"""

from __future__ import annotations


class MetergateError(Exception):
    """Root of every error metergate raises on purpose."""


class InvalidInput(MetergateError):
    """Input that is somebody else's fault. `reason` is a stable code, `field` the path of the culprit."""

    reason: str = "invalid"

    def __init__(self, message: str, *, reason: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.field = field
        self.message = message


class InvalidEvent(InvalidInput):
    """A usage event that fails validation."""

    reason = "invalid_event"


class DecodeError(InvalidInput):
    """Bytes that cannot be decoded into a record of the expected kind."""

    reason = "undecodable"


class CatalogError(InvalidInput):
    """A catalog file that is wrong; `field` is the dotted path inside the file."""

    reason = "invalid_catalog"


class SubscriptionError(InvalidInput):
    """A subscription change that cannot be applied (domain/subscriptions.py); `field` names the culprit."""

    reason = "invalid_subscription"


class DeliveryError(MetergateError):
    """Kafka did not accept a record (after the producer's own retries), or did not acknowledge it in
    time. `topic` names where it was going, `reason` the broker's reason (or "timeout")."""

    def __init__(self, message: str, *, topic: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.topic = topic
        self.reason = reason


class StackError(MetergateError):
    """The embedded stack could not start or stop cleanly."""


class ConfigurationError(MetergateError, ValueError):
    """Settings that are missing or cannot work together (a ValueError too, for callers that catch one)."""
