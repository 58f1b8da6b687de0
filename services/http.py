"""The HTTP edge the entitlements sidecar and the admin API share (Starlette on uvicorn): the
server that stops on a signal without dying of it, the API key a request presents, problems as
responses, and the answers to an unknown path (404) and a method a path does not take (405).

A problem is one JSON object `{reason, message, field?}` (`checks.problem_body`); as
`application/problem+json` (RFC 9457, the admin API) it also carries `type`, `title`, `status`
and `detail`. A 401 carries `WWW-Authenticate`. The sidecar's raw check route (`entitlements.checks.CheckRoute`) answers its
own problems with orjson on its fast path and does not go through this module.
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Awaitable, Callable, Iterator
from http import HTTPStatus
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import Response

from metergate.entitlements.keys import ApiKey, KeyStore
from metergate_services.entitlements.checks import Problem, problem_body

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"


class Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown (the process would die of the signal
    before the service's own shutdown: the sidecar's checkpoint, the admin API's relay); here a
    signal only starts the shutdown and `run` returns."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def problem(error: Problem, media_type: str = JSON) -> Response:
    """A problem as its response (a 401 says how to authenticate)."""
    headers = {"WWW-Authenticate": 'Bearer realm="metergate"'} if error.status == 401 else None
    body = problem_body(error)
    if media_type == PROBLEM_JSON:
        standard = {
            "type": "about:blank",
            "title": HTTPStatus(error.status).phrase,
            "status": error.status,
            "detail": error.message,
        }
        body = {**standard, **body}
    return Response(
        json.dumps(body, separators=(",", ":")), error.status, headers=headers, media_type=media_type
    )


def authenticate(request: Request, keys: KeyStore) -> ApiKey:
    """The valid key the request presents (header X-API-Key, or Authorization: Bearer); a 401
    problem without one. Each API checks the scope the operation needs."""
    presented = request.headers.get("x-api-key")
    if presented is None:
        authorization = request.headers.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            presented = authorization[7:].strip()
    if not presented:
        raise Problem(
            401, "unauthenticated", "an API key is required (header X-API-Key or Authorization: Bearer)"
        )
    key = keys.authenticate(presented)
    if key is None:
        raise Problem(401, "unauthenticated", "the API key is not valid (unknown, revoked or mistyped)")
    return key


Handler = Callable[[Request, Exception], Awaitable[Response]]


def exception_handlers(media_type: str = JSON) -> dict[Any, Handler]:
    """Starlette's `exception_handlers`: an unknown path is a 404 problem, a method the path does
    not take a 405 problem listing the ones it takes in `Allow`."""

    async def not_found(request: Request, exc: Exception) -> Response:
        return problem(
            Problem(404, "not_found", f"no such path {request.url.path}; see /openapi.json"), media_type
        )

    async def not_allowed(request: Request, exc: Exception) -> Response:
        response = problem(
            Problem(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {request.url.path}; see /openapi.json",
            ),
            media_type,
        )
        allow = (getattr(exc, "headers", None) or {}).get("Allow")
        if allow:
            response.headers["Allow"] = allow
        return response

    return {404: not_found, 405: not_allowed}
