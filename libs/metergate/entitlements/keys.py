"""API keys of the entitlement sidecar: scopes, customer binding, stored hashed.

A key reads `mgk_<id>_<secret>`: `id` (8 random bytes, hex) finds the record, `secret` (32 random
bytes, hex: 256 bits) proves it. Only sha256(secret) is stored (a 256-bit random secret
needs no slow hash: nobody can guess it, so there is no dictionary to slow down), and it is
compared with `hmac.compare_digest` (constant time). The plaintext key is shown once, by
`metergate keys create`, and never stored, logged or put in a repr.

Scopes: `check` (decisions and a customer's entitlements), `ingest` (report usage), `admin`
(everything, metrics). A key bound to customers (`customers` non-empty) sees and reports only those
customers; an unbound key sees all of them (one customer at a time: no endpoint lists customers).

The file (JSON, mode 0600, path `METERGATE_ENTITLEMENTS_KEYS_FILE`) is re-read when it changes, so
a key created or revoked with the CLI takes effect in a running sidecar within a second.

A presented key that verified is remembered (in memory, with the set of keys it was verified
against), so a sidecar answering thousands of checks a second hashes each key once; the memory is
dropped whenever the file is re-read with a change, so a revocation still takes effect within a
second. Only keys that verified are remembered (a stream of wrong keys cannot fill it), at most
`VERIFIED_CAPACITY` of them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from metergate.errors import ConfigurationError, InvalidInput

SCOPES = ("check", "ingest", "admin")
VERIFIED_CAPACITY = 4096
PREFIX = "mgk_"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: tuple[str, ...]
    customers: tuple[str, ...] = ()
    created_at: str = ""
    revoked_at: str | None = None
    secret_sha256: str = field(default="", repr=False)

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def sees(self, customer_id: str) -> bool:
        return not self.customers or customer_id in self.customers

    def public(self) -> dict[str, object]:
        """What `keys list` shows: never the hash."""
        return {
            "id": self.id,
            "name": self.name,
            "scopes": list(self.scopes),
            "customers": list(self.customers),
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._keys: dict[str, ApiKey] = {}
        self._mtime: float | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        #: presented key -> (the keys it was verified against, its record)
        self._verified: dict[str, tuple[dict[str, ApiKey], ApiKey]] = {}

    def __repr__(self) -> str:
        return f"KeyStore({str(self.path)!r}, {len(self._keys)} keys)"

    # -- reading -----------------------------------------------------------------------------------
    def load(self) -> dict[str, ApiKey]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._keys, self._mtime = {}, None
            return self._keys
        if self._mtime == stat.st_mtime_ns:
            return self._keys
        try:
            document = json.loads(self.path.read_text())
            keys = {
                item["id"]: ApiKey(
                    id=item["id"],
                    name=item["name"],
                    scopes=tuple(item["scopes"]),
                    customers=tuple(item.get("customers", ())),
                    created_at=item.get("created_at", ""),
                    revoked_at=item.get("revoked_at"),
                    secret_sha256=item["secret_sha256"],
                )
                for item in document["keys"]
            }
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(f"{self.path}: not a metergate key file ({exc})") from None
        self._keys, self._mtime = keys, stat.st_mtime_ns
        return keys

    def _fresh(self) -> dict[str, ApiKey]:
        now = time.monotonic()
        if now - self._checked >= 1.0:
            with self._lock:
                self._checked = now
                self.load()
        return self._keys

    def authenticate(self, presented: str | None) -> ApiKey | None:
        """The key `presented` proves, or None (unknown, malformed, revoked or wrong secret)."""
        if not presented or not presented.startswith(PREFIX):
            return None
        keys = self._fresh()
        known = self._verified.get(presented)
        if known is not None and known[0] is keys:
            return known[1]
        key_id, _, secret = presented[len(PREFIX) :].partition("_")
        stored = keys.get(key_id)
        if stored is None or not secret:
            return None
        if not hmac.compare_digest(_digest(secret).encode(), stored.secret_sha256.encode()):
            return None
        if stored.revoked_at is not None:
            return None
        if len(self._verified) >= VERIFIED_CAPACITY:
            self._verified = {}
        self._verified[presented] = (keys, stored)
        return stored

    # -- writing (the CLI) -------------------------------------------------------------------------
    def create(self, name: str, scopes: Iterable[str], customers: Iterable[str] = ()) -> tuple[ApiKey, str]:
        """A new key; returns it and its plaintext (shown once, never stored)."""
        scopes = tuple(dict.fromkeys(scopes))
        if not name.strip():
            raise InvalidInput("--name: a key needs a non-empty name", field="name")
        if not scopes:
            raise InvalidInput(f"--scope: give at least one of {', '.join(SCOPES)}", field="scope")
        for scope in scopes:
            if scope not in SCOPES:
                raise InvalidInput(
                    f"--scope: {scope!r} is not a scope; use {', '.join(SCOPES)}", field="scope"
                )
        customers = tuple(dict.fromkeys(customers))
        for customer in customers:
            if not customer.strip():
                raise InvalidInput("--customer: a customer id cannot be empty", field="customer")
        keys = dict(self.load())
        key_id = secrets.token_hex(8)
        secret = secrets.token_hex(32)
        key = ApiKey(
            id=key_id,
            name=name,
            scopes=scopes,
            customers=customers,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            secret_sha256=_digest(secret),
        )
        keys[key_id] = key
        self._write(keys)
        return key, f"{PREFIX}{key_id}_{secret}"

    def revoke(self, key_id_or_name: str) -> list[ApiKey]:
        keys = dict(self.load())
        matched = [k for k in keys.values() if key_id_or_name in (k.id, k.name) and k.revoked_at is None]
        if not matched:
            raise InvalidInput(
                f"no active key with id or name {key_id_or_name!r} in {self.path}", field="key"
            )
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        for key in matched:
            keys[key.id] = ApiKey(**{**asdict(key), "revoked_at": stamp})
        self._write(keys)
        return matched

    def list(self) -> list[ApiKey]:
        return sorted(self.load().values(), key=lambda k: (k.created_at, k.name))

    def _write(self, keys: dict[str, ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {"keys": [{**key.public(), "secret_sha256": key.secret_sha256} for key in keys.values()]}
        fd, temporary = tempfile.mkstemp(prefix=self.path.name, suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                os.fchmod(handle.fileno(), 0o600)
                json.dump(document, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self._mtime = None
        self.load()
