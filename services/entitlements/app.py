"""The sidecar's HTTP application (Starlette on uvicorn): thin, every rule lives in the library.

Each handler: authenticate (401 without a valid key), authorise (403 without the scope or for a
customer the key is not bound to), validate (400 naming the field), hand over to `Entitlements`,
encode. Checks run on the event loop (microseconds, no I/O); ingest waits for Kafka on a worker
thread. The two check endpoints are answered by `checks.CheckRoute`, a raw ASGI route ahead of
Starlette's router (same steps, no Request object, orjson); everything else goes through Starlette.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from metergate.entitlements import Entitlements
from metergate.entitlements.keys import ApiKey, KeyStore
from metergate_services.entitlements.api import (
    MAX_BATCH_EVENTS,
    CloudEventIn,
    UsageEventIn,
    one_line,
    openapi,
)
from metergate_services.entitlements.checks import BATCH, CHECK, CheckRoute, Problem
from metergate_services.http import authenticate, exception_handlers, problem

log = logging.getLogger("metergate.entitlements.http")

JSON = "application/json"
CLOUDEVENT = "application/cloudevents+json"
CLOUDEVENT_BATCH = "application/cloudevents-batch+json"
#: CloudEvents attribute that carries each UsageEvent field (for error messages in the sender's terms)
CLOUD_FIELDS = {
    "event_id": "id",
    "customer_id": "subject",
    "meter": "type",
    "timestamp": "time",
    "quantity": "data.quantity",
}


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


def reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":"), default=_default), status, headers=headers, media_type=JSON
    )


def create_app(entitlements: Entitlements, keys: KeyStore) -> CheckRoute:
    document = json.dumps(openapi()).encode()

    def authorise(request: Request, scope: str) -> ApiKey:
        key = authenticate(request, keys)
        if not key.allows(scope):
            raise Problem(403, "forbidden", f"the key {key.name!r} lacks the {scope!r} scope")
        return key

    def may_see(key: ApiKey, customer_id: str, field: str = "customer_id") -> None:
        if not key.sees(customer_id):
            raise Problem(
                403,
                "forbidden",
                f"{field}: the key {key.name!r} is not bound to customer {customer_id!r}",
                field,
            )

    async def body_json(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise Problem(400, "invalid_json", f"body: not JSON ({exc})", "body") from None

    def handler(
        function: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                return await function(request)
            except Problem as error:
                return problem(error)

        return wrapped

    @handler
    async def customer(request: Request) -> Response:
        key = authorise(request, "check")
        customer_id = request.path_params["customer_id"]
        may_see(key, customer_id)
        features = entitlements.customer(customer_id)
        if features is None:
            raise Problem(
                404,
                "no_subscription",
                f"customer_id: no subscription known for customer {customer_id!r}",
                "customer_id",
            )
        fresh = entitlements.freshness()
        return reply(
            {
                "customer_id": customer_id,
                "features": [d.to_json() for d in features],
                "as_of": fresh.as_of,
                "stale": fresh.stale,
                "source": fresh.source.value,
            }
        )

    @handler
    async def events(request: Request) -> Response:
        key = authorise(request, "ingest")
        content_type = request.headers.get("content-type", JSON).split(";")[0].strip().lower()
        data = await body_json(request)
        cloud = content_type in (CLOUDEVENT, CLOUDEVENT_BATCH)
        if content_type == CLOUDEVENT_BATCH or (content_type == JSON and isinstance(data, list)):
            if not isinstance(data, list) or not data:
                raise Problem(400, "invalid_body", "body: expected a non-empty JSON array of events", "body")
            items = data
        elif isinstance(data, dict):
            items = [data]
        else:
            raise Problem(
                400, "invalid_body", "body: expected a JSON object (one event) or an array of events", "body"
            )
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                where = f"body.{index}" if isinstance(data, list) else "body"
                raise Problem(400, "invalid_body", f"{where}: expected a JSON object (one event)", where)
        if len(items) > MAX_BATCH_EVENTS:
            raise Problem(
                400,
                "batch_too_large",
                f"body: at most {MAX_BATCH_EVENTS} events per request, got {len(items)}",
                "body",
            )
        arrived = datetime.now(UTC)
        parsed: list[dict[str, Any] | None] = []
        early: dict[int, dict[str, Any]] = {}
        for index, item in enumerate(items):
            try:
                event = from_cloudevent(item, arrived) if cloud else from_json(item, arrived)
            except Problem as error:
                early[index] = {
                    "index": index,
                    "status": "rejected",
                    "reason": error.reason,
                    "field": error.field,
                    "message": error.message,
                }
                parsed.append(None)
                continue
            if not key.sees(event["customer_id"]):
                field = "subject" if cloud else "customer_id"
                early[index] = {
                    "index": index,
                    "event_id": event["event_id"],
                    "status": "rejected",
                    "reason": "forbidden",
                    "field": field,
                    "message": f"{field}: the key {key.name!r} is not bound to customer {event['customer_id']!r}",
                }
                parsed.append(None)
                continue
            parsed.append(event)
        to_send = [(index, event) for index, event in enumerate(parsed) if event is not None]
        receipts = (
            await run_in_threadpool(entitlements.report, [event for _, event in to_send]) if to_send else []
        )
        results: list[dict[str, Any]] = []
        sent = iter(zip(to_send, receipts, strict=True))
        for index in range(len(items)):
            if index in early:
                results.append({k: v for k, v in early[index].items() if v is not None})
            else:
                (_, _), receipt = next(sent)
                body = receipt.to_json()
                body["index"] = index
                if cloud and body.get("field") in CLOUD_FIELDS:
                    body["field"] = CLOUD_FIELDS[body["field"]]
                results.append(body)
        counts = {
            status: sum(1 for r in results if r["status"] == status)
            for status in ("accepted", "duplicate", "rejected")
        }
        return reply({**counts, "events": results})

    async def health(request: Request) -> Response:
        fresh = entitlements.freshness()
        ready = entitlements.caught_up
        body = {"ready": ready, "source": fresh.source.value, "stale": fresh.stale, "as_of": fresh.as_of}
        return reply(body, 200 if ready else 503)

    @handler
    async def metrics(request: Request) -> Response:
        authorise(request, "admin")
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def openapi_json(request: Request) -> Response:
        return Response(document, media_type=JSON)

    route = CheckRoute(_unset, entitlements, keys)
    route.app = Starlette(
        routes=[
            # answered by `route` ahead of the router; listed so that other methods get 405
            Route(CHECK, route, methods=["POST"]),
            Route(BATCH, route, methods=["POST"]),
            Route("/v1/customers/{customer_id}/entitlements", customer, methods=["GET"]),
            Route("/v1/events", events, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi_json, methods=["GET"]),
        ],
        exception_handlers=exception_handlers(),
    )
    return route


async def _unset(scope: Any, receive: Any, send: Any) -> None:  # replaced before the first request
    raise RuntimeError("CheckRoute.app not set")


def _validated(item: Any, arrived: datetime, prefix: str = "") -> dict[str, Any]:
    try:
        event = UsageEventIn.model_validate(item)
    except ValidationError as exc:
        field, message = one_line(exc)
        raise Problem(400, "invalid_field", message, field) from None
    data = event.model_dump()
    if data["timestamp"] is None:
        data["timestamp"] = arrived
    return data


def from_json(item: Any, arrived: datetime) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise Problem(400, "invalid_body", "event: expected a JSON object", "event")
    return _validated(item, arrived)


def from_cloudevent(item: Any, arrived: datetime) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise Problem(400, "invalid_body", "event: expected a CloudEvent JSON object", "event")
    try:
        event = CloudEventIn.model_validate(item)
    except ValidationError as exc:
        field, message = one_line(exc)
        raise Problem(400, "invalid_field", message, field) from None
    return {
        "event_id": event.id,
        "customer_id": event.subject,
        "meter": event.type,
        "quantity": event.data.quantity,
        "timestamp": event.time or arrived,
        "subject_id": event.data.subject_id,
        "properties": event.data.properties,
        "source": event.source,
    }
