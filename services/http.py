"""The HTTP edge the entitlements sidecar and the admin API share (Starlette on uvicorn): the
server that stops on a signal without dying of it, the API key a request presents, problems as
responses, and the answers to an unknown path (404) and a method a path does not take (405).

A problem is one JSON object `{reason, message, field?}` (`checks.problem_body`); a 401 carries
`WWW-Authenticate`. The sidecar's raw check route (`entitlements.checks.CheckRoute`) answers its
own problems with orjson on its fast path and does not go through this module.
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import Response

from metergate.entitlements.keys import ApiKey, KeyStore
from metergate_services.entitlements.checks import Problem, problem_body

JSON = "application/json"


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


def problem(error: Problem) -> Response:
    """A problem as its response (a 401 says how to authenticate)."""
    headers = {"WWW-Authenticate": 'Bearer realm="metergate"'} if error.status == 401 else None
    body = json.dumps(problem_body(error), separators=(",", ":"))
    return Response(body, error.status, headers=headers, media_type=JSON)


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


async def not_found(request: Request, exc: Exception) -> Response:
    return problem(Problem(404, "not_found", f"no such path {request.url.path}; see /openapi.json"))


async def not_allowed(request: Request, exc: Exception) -> Response:
    response = problem(
        Problem(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.url.path}; see /openapi.json",
        )
    )
    allow = (getattr(exc, "headers", None) or {}).get("Allow")
    if allow:
        response.headers["Allow"] = allow
    return response


#: Starlette's `exception_handlers` for both APIs
EXCEPTION_HANDLERS: dict[Any, Any] = {404: not_found, 405: not_allowed}
