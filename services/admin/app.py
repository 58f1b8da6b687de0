"""The admin API's HTTP application (Starlette on uvicorn): thin, every rule lives in
`metergate.provisioning` and the pure core below it.

Each handler: authenticate (401 without a valid key), authorise (403 without the `admin` scope),
validate (400 naming the field), call one use case on a worker thread (PostgreSQL), encode. The
audit's `who` is the API key's name. A use case's `SubscriptionError` is a 400 naming the field,
a 404 when it names something unknown (`reason` not_found) and a 409 when something exists
already with other content (`conflict`: published terms are never edited).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from metergate import provisioning
from metergate.domain import subscriptions as rules
from metergate.domain.records import FeatureEntitlement, Pricing
from metergate.domain.subscriptions import AddOn, History, PeriodBill, PriceOverrides, PublishedPlan, When
from metergate.entitlements.keys import ApiKey, KeyStore
from metergate.errors import InvalidInput, SubscriptionError
from metergate_services.admin.api import (
    AddOnIn,
    CancelIn,
    ChangeIn,
    CustomerIn,
    FeatureIn,
    OverridesIn,
    PlanVersionIn,
    PricingIn,
    SubscriptionIn,
    bounded,
    openapi,
)
from metergate_services.entitlements.api import one_line
from metergate_services.entitlements.checks import Problem
from metergate_services.http import PROBLEM_JSON, authenticate, exception_handlers
from metergate_services.http import problem as problem_response

log = logging.getLogger("metergate.admin.http")

JSON = "application/json"
Clock = Callable[[], datetime]
M = TypeVar("M", bound=BaseModel)
_EXPONENT = re.compile(r"^-?\d+(\.\d+)?[eE][+-]?\d+$")


def plain(value: Any) -> Any:
    """JSON-ready: decimals as exact plain text (never `1E+3`), moments as RFC 3339, enums by value."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, str) and _EXPONENT.match(value):
        return format(Decimal(value), "f")
    return value


def reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(plain(body), separators=(",", ":")), status, headers=headers, media_type=JSON)


def problem(error: Problem) -> Response:
    """An error as `application/problem+json` (RFC 9457) naming the field."""
    return problem_response(error, PROBLEM_JSON)


# ---------------------------------------------------------------------------------------------
# bodies out


def feature_body(feature: FeatureEntitlement) -> dict[str, Any]:
    return feature.model_dump()


def add_on_body(add_on: AddOn) -> dict[str, Any]:
    return {
        "key": add_on.key,
        "name": add_on.name,
        "currency": add_on.currency,
        "fee": add_on.fee,
        "max_quantity": add_on.max_quantity,
        "features": {k: feature_body(f) for k, f in sorted(add_on.features.items())},
    }


def plan_version_body(plan: PublishedPlan) -> dict[str, Any]:
    terms = plan.terms
    return {
        "plan": terms.plan,
        "version": terms.version,
        "currency": terms.currency,
        "base_fee": terms.base_fee,
        "reset_period": terms.reset_period,
        "features": {k: feature_body(f) for k, f in sorted(terms.features.items())},
        "variable": sorted(plan.variable),
        "add_ons": {k: add_on_body(a) for k, a in sorted(plan.add_ons.items())},
    }


def history_body(history: History) -> dict[str, Any]:
    return {
        "subscription_id": history.subscription_id,
        "customer_id": history.versions[0].customer_id,
        "ends_at": history.end,
        "versions": [v.as_dict() for v in history.versions],
    }


def fees_body(bill: PeriodBill) -> dict[str, Any]:
    return {
        "period_start": bill.period.start,
        "period_end": bill.period.end,
        "currency": bill.currency,
        "total": bill.total,
        "lines": [
            {
                "segment_start": line.segment_start,
                "segment_end": line.segment_end,
                "plan": line.plan,
                "plan_version": line.plan_version,
                "charge": line.charge.charge,
                "feature": line.charge.feature,
                "quantity": line.charge.quantity,
                "amount": line.charge.amount,
                "currency": line.charge.currency,
                "detail": line.charge.detail,
            }
            for line in bill.lines
        ],
    }


def audit_body(entry: provisioning.AuditEntry) -> dict[str, Any]:
    return {
        "at": entry.at,
        "who": entry.who,
        "action": entry.action,
        "entity": entry.entity,
        "entity_id": entry.entity_id,
        "before": entry.before,
        "after": entry.after,
        "changes": entry.changes,
    }


# ---------------------------------------------------------------------------------------------
# bodies in


def _storable(value: Any, path: str) -> None:
    """What PostgreSQL can store exactly: no JSON fractions (binary floats: money and quantities
    travel as decimal strings), no NUL character and no lone surrogate in any text or key."""
    if isinstance(value, float):
        raise Problem(
            400,
            "invalid_field",
            f'{path}: a fraction must travel as a decimal string (e.g. "{value!r}"): JSON fractions are binary floats',
            path,
        )
    if isinstance(value, str):
        for position, char in enumerate(value):
            if char == "\x00" or "\ud800" <= char <= "\udfff":
                raise Problem(
                    400,
                    "invalid_field",
                    f"{path}: contains {'a NUL character' if char == chr(0) else 'a lone surrogate'} "
                    f"(U+{ord(char):04X}) at position {position}: give text without it",
                    path,
                )
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path != "body" else str(key)
            _storable(str(key), where)
            _storable(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _storable(item, f"{path}.{index}" if path != "body" else str(index))


async def parsed(request: Request, model: type[M]) -> M:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise Problem(400, "invalid_json", f"body: not JSON ({exc})", "body") from None
    if not isinstance(data, dict):
        raise Problem(400, "invalid_body", "body: expected a JSON object", "body")
    _storable(data, "body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, message = one_line(exc)
        raise Problem(400, "invalid_field", message, field) from None


def pricing_of(given: PricingIn) -> Pricing:
    try:
        return Pricing.model_validate(given.model_dump())
    except ValidationError as exc:
        field, message = one_line(exc, "pricing.")
        raise Problem(400, "invalid_field", message, field) from None


def overrides_of(
    given: OverridesIn, field: str = "overrides"
) -> tuple[Decimal | None, dict[str, Pricing], dict[str, Decimal]]:
    pricing: dict[str, Pricing] = {}
    for key, item in given.pricing.items():
        try:
            pricing[key] = Pricing.model_validate(item.model_dump())
        except ValidationError as exc:
            where, message = one_line(exc, f"{field}.pricing.{key}.")
            raise Problem(400, "invalid_field", message, where) from None
    return given.base_fee, pricing, dict(given.add_on_fees)


def terms_of(features: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: terms.model_dump(exclude_none=True) for name, terms in features.items()}


def when_of(at: When | datetime) -> When | datetime:
    return at


def values_of(values: dict[str, Any] | None) -> dict[str, Decimal | str] | None:
    return None if values is None else {k: str(v) for k, v in values.items()}


def path_id(request: Request, name: str) -> str:
    value = request.path_params[name]
    try:
        return rules.check_id(name, value)
    except SubscriptionError as exc:
        raise Problem(400, "invalid_field", exc.message, name) from None


# ---------------------------------------------------------------------------------------------


def create_app(engine: Engine, keys: KeyStore, *, clock: Clock) -> Starlette:
    document = json.dumps(openapi()).encode()

    def authorise(request: Request) -> ApiKey:
        key = authenticate(request, keys)
        if "admin" not in key.scopes:
            raise Problem(403, "forbidden", f"the key {key.name!r} lacks the 'admin' scope")
        return key

    def handler(
        function: Callable[[Request, ApiKey], Awaitable[Response]], query: tuple[str, ...] = ()
    ) -> Callable[[Request], Awaitable[Response]]:
        """Authenticate, refuse query parameters the operation does not take (`query`: the ones it
        does), call, and answer an error as a problem naming the field."""

        async def wrapped(request: Request) -> Response:
            try:
                key = authorise(request)
                for name in request.query_params:
                    if name not in query:
                        takes = ", ".join(query) or "none"
                        raise Problem(
                            400,
                            "invalid_field",
                            f"{name}: unknown query parameter (this operation takes {takes})",
                            name,
                        )
                return await function(request, key)
            except Problem as error:
                return problem(error)
            except SubscriptionError as error:
                status = {provisioning.NOT_FOUND: 404, provisioning.CONFLICT: 409}.get(error.reason, 400)
                reason = error.reason if status != 400 else "invalid_field"
                return problem(Problem(status, reason, str(error).splitlines()[0], error.field))
            except InvalidInput as error:
                return problem(Problem(400, error.reason, str(error).splitlines()[0], error.field))
            except OperationalError as error:
                log.warning("admin: PostgreSQL unreachable: %s", str(error.orig or error).splitlines()[0])
                return problem(Problem(503, "unavailable", "PostgreSQL unreachable: try again shortly"))

        return wrapped

    def call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return run_in_threadpool(function, engine, *args, **kwargs)

    # -- features, plans and add-ons

    def feature_definition(found: Any) -> dict[str, Any]:
        return {
            "feature": found.feature,
            "kind": found.kind,
            "meter": found.meter,
            "description": found.description,
        }

    @handler
    async def list_features(request: Request, key: ApiKey) -> Response:
        return reply({"features": [feature_definition(f) for f in await call(provisioning.list_features)]})

    @handler
    async def publish_feature(request: Request, key: ApiKey) -> Response:
        body = await parsed(request, FeatureIn)
        found, created = await call(
            provisioning.publish_feature,
            feature=body.feature,
            kind=body.kind,
            meter=body.meter,
            description=body.description,
            who=key.name,
            now=clock(),
        )
        return reply({**feature_definition(found), "created": created}, 201 if created else 200)

    @handler
    async def list_plans(request: Request, key: ApiKey) -> Response:
        plans = await call(provisioning.list_plans)
        return reply(
            {
                "plans": [
                    {"plan": p.plan, "name": p.name, "product": p.product, "versions": list(p.versions)}
                    for p in plans
                ]
            }
        )

    @handler
    async def show_plan(request: Request, key: ApiKey) -> Response:
        listed = await call(provisioning.show_plan, path_id(request, "plan"))
        return reply(
            {
                "plan": listed.plan,
                "name": listed.name,
                "product": listed.product,
                "versions": list(listed.versions),
            }
        )

    @handler
    async def show_plan_version(request: Request, key: ApiKey) -> Response:
        plan = path_id(request, "plan")
        raw = request.path_params["version"]
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= 2_147_483_647:
            raise Problem(
                400, "invalid_field", f"version: expected a whole number >= 1, got {raw!r}", "version"
            )
        found = await call(provisioning.show_plan_version, plan, int(raw))
        return reply(plan_version_body(found))

    @handler
    async def publish_plan_version(request: Request, key: ApiKey) -> Response:
        plan = path_id(request, "plan")
        body = await parsed(request, PlanVersionIn)
        published, created = await call(
            provisioning.publish_plan_version,
            plan=plan,
            version=body.version,
            currency=body.currency,
            base_fee=body.base_fee,
            reset_period=body.reset_period,
            features=terms_of(body.features),
            variable=body.variable,
            add_ons=body.add_ons,
            name=body.name,
            who=key.name,
            now=clock(),
        )
        return reply({**plan_version_body(published), "created": created}, 201 if created else 200)

    @handler
    async def list_add_ons(request: Request, key: ApiKey) -> Response:
        return reply({"add_ons": [add_on_body(a) for a in await call(provisioning.list_add_ons)]})

    @handler
    async def show_add_on(request: Request, key: ApiKey) -> Response:
        return reply(add_on_body(await call(provisioning.show_add_on, path_id(request, "key"))))

    @handler
    async def publish_add_on(request: Request, key: ApiKey) -> Response:
        body = await parsed(request, AddOnIn)
        add_on, created = await call(
            provisioning.publish_add_on,
            key=body.key,
            currency=body.currency,
            fee=body.fee,
            features=terms_of(body.features),
            name=body.name,
            max_quantity=body.max_quantity,
            who=key.name,
            now=clock(),
        )
        return reply({**add_on_body(add_on), "created": created}, 201 if created else 200)

    # -- customers

    async def customer_reply(customer_id: str, created: bool | None, status: int = 200) -> Response:
        customer, histories = await call(provisioning.show_customer, customer_id)
        body = {
            "customer_id": customer.customer_id,
            "name": customer.name,
            "created_at": customer.created_at,
            "created_by": customer.created_by,
            "subscriptions": [history_body(h) for h in histories],
        }
        if created is not None:
            body["created"] = created
        return reply(body, status)

    @handler
    async def create_customer(request: Request, key: ApiKey) -> Response:
        body = await parsed(request, CustomerIn)
        created = await call(
            provisioning.create_customer, body.customer_id, name=body.name, who=key.name, now=clock()
        )
        return await customer_reply(body.customer_id, created, 201 if created else 200)

    @handler
    async def show_customer(request: Request, key: ApiKey) -> Response:
        return await customer_reply(path_id(request, "customer_id"), None)

    # -- subscriptions

    @handler
    async def create_subscription(request: Request, key: ApiKey) -> Response:
        body = await parsed(request, SubscriptionIn)
        base_fee, pricing, fees = overrides_of(body.overrides)
        changed = await call(
            provisioning.create_subscription,
            subscription_id=body.subscription_id or body.customer_id,
            customer_id=body.customer_id,
            plan=body.plan,
            version=body.version,
            start=body.start,
            anchor=body.anchor,
            reset_period=body.reset_period,
            add_ons=body.add_ons,
            variables=values_of(body.variables) or {},
            overrides=PriceOverrides(base_fee=base_fee, pricing=pricing, add_on_fees=fees),
            who=key.name,
            now=clock(),
        )
        return reply(history_body(changed.history), 201)

    @handler
    async def show_subscription(request: Request, key: ApiKey) -> Response:
        return reply(
            history_body(await call(provisioning.show_subscription, path_id(request, "subscription_id")))
        )

    def change_of(body: ChangeIn) -> provisioning.Change:
        overrides = None
        if body.overrides is not None:
            base_fee, pricing, fees = overrides_of(body.overrides)
            overrides = provisioning.OverrideUpdate(
                base_fee=base_fee, pricing=pricing, add_on_fees=fees, clear=body.overrides.clear
            )
        return provisioning.Change(
            plan=body.plan,
            version=body.version,
            add_ons=body.add_ons,
            variables=values_of(body.variables),
            overrides=overrides,
        )

    @handler
    async def change_subscription(request: Request, key: ApiKey) -> Response:
        subscription_id = path_id(request, "subscription_id")
        body = await parsed(request, ChangeIn)
        changed = await call(
            provisioning.change_subscription,
            subscription_id,
            change_of(body),
            at=when_of(body.at),
            who=key.name,
            now=clock(),
        )
        return reply(history_body(changed.history))

    @handler
    async def preview_change(request: Request, key: ApiKey) -> Response:
        subscription_id = path_id(request, "subscription_id")
        body = await parsed(request, ChangeIn)
        history, before, after = await call(
            provisioning.preview_change, subscription_id, change_of(body), at=when_of(body.at), now=clock()
        )
        return reply(
            {"subscription": history_body(history), "before": fees_body(before), "after": fees_body(after)}
        )

    @handler
    async def cancel_subscription(request: Request, key: ApiKey) -> Response:
        subscription_id = path_id(request, "subscription_id")
        body = await parsed(request, CancelIn)
        changed = await call(
            provisioning.cancel_subscription, subscription_id, at=when_of(body.at), who=key.name, now=clock()
        )
        return reply(history_body(changed.history))

    @handler
    async def unschedule_subscription(request: Request, key: ApiKey) -> Response:
        subscription_id = path_id(request, "subscription_id")
        changed = await call(provisioning.unschedule_subscription, subscription_id, who=key.name, now=clock())
        return reply(history_body(changed.history))

    @handler
    async def subscription_audit(request: Request, key: ApiKey) -> Response:
        trail = await call(provisioning.audit_trail, path_id(request, "subscription_id"))
        return reply({"entries": [audit_body(entry) for entry in trail]})

    @handler
    async def customer_audit(request: Request, key: ApiKey) -> Response:
        trail = await call(provisioning.customer_audit_trail, path_id(request, "customer_id"))
        return reply({"entries": [audit_body(entry) for entry in trail]})

    async def subscription_fees(request: Request, key: ApiKey) -> Response:
        subscription_id = path_id(request, "subscription_id")
        raw = request.query_params.get("period_of")
        moment = clock()
        if raw is not None:
            try:
                parsed_moment = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
            except ValueError:
                raise Problem(
                    400,
                    "invalid_field",
                    f"period_of: expected an RFC 3339 moment with an offset such as 2026-12-01T00:00:00Z, got {raw!r}",
                    "period_of",
                ) from None
            try:
                moment = bounded(parsed_moment)
            except ValueError as exc:
                raise Problem(400, "invalid_field", f"period_of: {exc}, got {raw!r}", "period_of") from None
        return reply(fees_body(await call(provisioning.preview_fees, subscription_id, moment)))

    fees = handler(subscription_fees, query=("period_of",))

    # -- the rest

    async def health(request: Request) -> Response:
        def ping() -> None:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        try:
            await run_in_threadpool(ping)
        except OperationalError:
            return reply({"ready": False, "message": "PostgreSQL unreachable"}, 503)
        return reply({"ready": True})

    async def openapi_json(request: Request) -> Response:
        return Response(document, media_type=JSON)

    def by_method(
        **endpoints: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        """One route per path (so a 405 lists every method of the path in `Allow`)."""

        async def dispatch(request: Request) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            return await endpoints[method](request)

        return dispatch

    subscription = "/v1/subscriptions/{subscription_id}"
    return Starlette(
        routes=[
            Route(
                "/v1/features", by_method(GET=list_features, POST=publish_feature), methods=["GET", "POST"]
            ),
            Route("/v1/plans", list_plans, methods=["GET"]),
            Route("/v1/plans/{plan}", show_plan, methods=["GET"]),
            Route("/v1/plans/{plan}/versions", publish_plan_version, methods=["POST"]),
            Route("/v1/plans/{plan}/versions/{version}", show_plan_version, methods=["GET"]),
            Route("/v1/add-ons", by_method(GET=list_add_ons, POST=publish_add_on), methods=["GET", "POST"]),
            Route("/v1/add-ons/{key}", show_add_on, methods=["GET"]),
            Route("/v1/customers", create_customer, methods=["POST"]),
            Route("/v1/customers/{customer_id}", show_customer, methods=["GET"]),
            Route("/v1/customers/{customer_id}/audit", customer_audit, methods=["GET"]),
            Route("/v1/subscriptions", create_subscription, methods=["POST"]),
            Route(subscription, show_subscription, methods=["GET"]),
            Route(subscription + "/changes", change_subscription, methods=["POST"]),
            Route(subscription + "/changes:preview", preview_change, methods=["POST"]),
            Route(subscription + "/cancel", cancel_subscription, methods=["POST"]),
            Route(subscription + "/unschedule", unschedule_subscription, methods=["POST"]),
            Route(subscription + "/audit", subscription_audit, methods=["GET"]),
            Route(subscription + "/fees", fees, methods=["GET"]),
            Route("/healthz", health, methods=["GET"]),
            Route("/openapi.json", openapi_json, methods=["GET"]),
        ],
        exception_handlers=exception_handlers(PROBLEM_JSON),
    )
