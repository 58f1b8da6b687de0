"""Every error metergate raises on purpose.

    MetergateError
    ├── InvalidInput                  bad input: somebody else's fault; reported, never fatal to a worker
    │   ├── InvalidEvent              a usage event fails validation (field + reason); goes to the DLQ
    │   ├── DecodeError               bytes that are not a record we know (reason code + message)
    │   └── CatalogError              a catalog file is wrong (path inside the file + reason)
    ├── DeliveryError                 Kafka did not accept a record we produced
    ├── StackError                    the embedded stack could not start or stop
    └── ConfigurationError            settings that cannot work together

Bad input carries a machine-readable `reason` code (it becomes the DLQ reason) and a human message
that names what was wrong, where, and what would be right. Anything not in this tree is a fault of
ours and should stop the process loudly.
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


class DeliveryError(MetergateError):
    """Kafka did not accept a record (after the producer's own retries)."""


class StackError(MetergateError):
    """The embedded stack could not start or stop cleanly."""


class ConfigurationError(MetergateError):
    """Settings that cannot work together."""
