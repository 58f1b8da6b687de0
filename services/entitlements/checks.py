"""The two hot endpoints, `POST /v1/entitlements/check` and `check:batch`, as a raw ASGI route.

`create_app` puts `CheckRoute` ahead of Starlette's router: a check is answered without a Request
object, without the router's regex walk, and with orjson in and out. What it does, in order, is
what every other handler does (app.py): authenticate (401), authorise the `check` scope (403),
read and validate the body (400 naming the field), refuse a customer the key is not bound to
(403), decide, encode. Bodies follow the same models (api.py): a request that the plain
validation below does not accept as it stands is handed to the pydantic model, so every refusal
carries pydantic's field and message, exactly as the OpenAPI document says.

The verified key is cached per presented key by the key store (`KeyStore.authenticate`), so a
check does not hash the secret again; the cache is dropped whenever the key file changes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from decimal import Decimal
from typing import Any

import orjson
from pydantic import ValidationError

from metergate.domain.entitlements import Decision
from metergate.domain.records import MAX_QUANTITY
from metergate.entitlements import Entitlements
from metergate.entitlements.keys import ApiKey, KeyStore
from metergate.errors import InvalidInput
from metergate_services.entitlements.api import (
    MAX_BATCH_CHECKS,
    BatchCheckRequest,
    CheckRequest,
    one_line,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CHECK = "/v1/entitlements/check"
BATCH = "/v1/entitlements/check:batch"
#: a batch of 100 checks with identifiers of 256 characters is ~60 KB
MAX_BODY_BYTES = 256 * 1024
_MAX_ID = 256
_CHECK_FIELDS = frozenset(("customer_id", "feature", "requested_units", "subject_id"))
_JSON_HEADERS = [(b"content-type", b"application/json")]
_ONE = Decimal(1)
_MAX_UNITS = int(MAX_QUANTITY)


class Problem(InvalidInput):
    """A request the sidecar refuses: HTTP status, reason code, message, the field at fault."""

    def __init__(self, status: int, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.field = status, reason, message, field


def problem_body(error: Problem) -> dict[str, Any]:
    body = {"reason": error.reason, "message": error.message}
    if error.field is not None:
        body["field"] = error.field
    return body


def decision_body(d: Decision) -> dict[str, Any]:
    """`Decision.to_json()` for orjson: Decimals as exact strings, datetimes and enums left to orjson
    (RFC 3339 as `isoformat()` writes it; the enum's value)."""
    return {
        "has_access": d.has_access,
        "reason": d.reason,
        "message": d.message,
        "customer_id": d.customer_id,
        "feature": d.feature,
        "kind": d.kind,
        "enforcement": d.enforcement,
        "usage": None if d.usage is None else f"{d.usage.normalize():f}",
        "included": None if d.included is None else f"{d.included.normalize():f}",
        "limit": None if d.limit is None else f"{d.limit.normalize():f}",
        "remaining": None if d.remaining is None else f"{d.remaining.normalize():f}",
        "requested_units": f"{d.requested_units.normalize():f}",
        "overage_units": None if d.overage_units is None else f"{d.overage_units.normalize():f}",
        "config_value": d.config_value,
        "period_start": d.period_start,
        "period_end": d.period_end,
        "as_of": d.as_of,
        "stale": d.stale,
        "source": d.source,
    }


def _plain_check(item: Any) -> tuple[str, str, Decimal | int, str | None] | None:
    """The check of a request the model would accept as it stands, else None (the model decides).
    Only JSON integers take this path for `requested_units`; a decimal string goes to the model."""
    if type(item) is not dict or not item.keys() <= _CHECK_FIELDS:
        return None
    customer_id = item.get("customer_id")
    feature = item.get("feature")
    if type(customer_id) is not str or type(feature) is not str:
        return None
    if not (0 < len(customer_id) <= _MAX_ID and 0 < len(feature) <= _MAX_ID):
        return None
    units = item.get("requested_units", _ONE)
    if units is not _ONE and (type(units) is not int or not 0 <= units <= _MAX_UNITS):
        return None
    subject_id = item.get("subject_id")
    if subject_id is not None and (type(subject_id) is not str or not 0 < len(subject_id) <= _MAX_ID):
        return None
    return customer_id, feature, units, subject_id


def _modelled(model: type[CheckRequest] | type[BatchCheckRequest], data: Any) -> Any:
    if not isinstance(data, dict):
        raise Problem(400, "invalid_body", "body: expected a JSON object", "body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, message = one_line(exc)
        raise Problem(400, "invalid_field", message, field) from None


def _exact(raw: bytes) -> Any:
    """The body as the standard library reads it (the reference: orjson turns integers beyond 64
    bits into floats and refuses NaN, so whatever the plain path does not accept is read again)."""
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise Problem(400, "invalid_json", f"body: not JSON ({exc})", "body") from None


def _one(data: Any, raw: bytes) -> tuple[str, str, Decimal | int, str | None]:
    plain = _plain_check(data)
    if plain is not None:
        return plain
    item = _modelled(CheckRequest, _exact(raw))
    return item.customer_id, item.feature, item.requested_units, item.subject_id


def _many(data: Any, raw: bytes) -> list[tuple[str, str, Decimal | int, str | None]]:
    if type(data) is dict and len(data) == 1:
        checks = data.get("checks")
        if type(checks) is list and 0 < len(checks) <= MAX_BATCH_CHECKS:
            plain = [_plain_check(item) for item in checks]
            if None not in plain:
                return plain  # type: ignore[return-value]
    batch = _modelled(BatchCheckRequest, _exact(raw))
    return [(c.customer_id, c.feature, c.requested_units, c.subject_id) for c in batch.checks]


class CheckRoute:
    """ASGI: the check endpoints for POST, everything else to `app` (Starlette)."""

    def __init__(self, app: ASGIApp, entitlements: Entitlements, keys: KeyStore) -> None:
        self.app = app
        self.entitlements = entitlements
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            if path == CHECK or path == BATCH:
                await self.answer(path == BATCH, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def answer(self, batch: bool, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            key = self.authorise(scope["headers"])
            raw = await self.body(receive)
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                data = None  # not what the plain path accepts: read by `_exact`
            if batch:
                checks = _many(data, raw)
                for index, (customer_id, *_rest) in enumerate(checks):
                    self.may_see(key, customer_id, f"checks.{index}.customer_id")
                check = self.entitlements.check
                body: Any = {
                    "decisions": [
                        decision_body(check(customer_id, feature, units, subject_id))
                        for customer_id, feature, units, subject_id in checks
                    ]
                }
            else:
                customer_id, feature, units, subject_id = _one(data, raw)
                self.may_see(key, customer_id, "customer_id")
                body = decision_body(self.entitlements.check(customer_id, feature, units, subject_id))
            status, headers = 200, _JSON_HEADERS
        except Problem as refused:
            status, body, headers = refusal(refused)
        payload = orjson.dumps(body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    def authorise(self, headers: list[tuple[bytes, bytes]]) -> ApiKey:
        presented: str | None = None
        authorization = b""
        for name, value in headers:
            if name == b"x-api-key":
                presented = value.decode("latin-1")
                break
            if name == b"authorization":
                authorization = value
        if presented is None and authorization[:7].lower() == b"bearer ":
            presented = authorization[7:].decode("latin-1").strip()
        if not presented:
            raise Problem(
                401, "unauthenticated", "an API key is required (header X-API-Key or Authorization: Bearer)"
            )
        key = self.keys.authenticate(presented)
        if key is None:
            raise Problem(401, "unauthenticated", "the API key is not valid (unknown, revoked or mistyped)")
        if not key.allows("check"):
            raise Problem(403, "forbidden", f"the key {key.name!r} lacks the 'check' scope")
        return key

    @staticmethod
    def may_see(key: ApiKey, customer_id: str, field: str) -> None:
        if key.customers and customer_id not in key.customers:
            raise Problem(
                403,
                "forbidden",
                f"{field}: the key {key.name!r} is not bound to customer {customer_id!r}",
                field,
            )

    @staticmethod
    async def body(receive: Receive) -> bytes:
        message = await receive()
        raw = message.get("body", b"")
        if message.get("more_body"):
            parts = [raw]
            size = len(raw)
            while message.get("more_body"):
                message = await receive()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise Problem(
                        400, "invalid_body", f"body: at most {MAX_BODY_BYTES} bytes per check request", "body"
                    )
                parts.append(chunk)
            raw = b"".join(parts)
        return raw  # type: ignore[no-any-return]


def refusal(refused: Problem) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
    body = problem_body(refused)
    headers = _JSON_HEADERS
    if refused.status == 401:
        headers = [*_JSON_HEADERS, (b"www-authenticate", b'Bearer realm="metergate"')]
    return refused.status, body, headers
