"""The request and response bodies of the sidecar, as models: they validate requests and make the
OpenAPI document (`openapi()`), so the document and the behaviour come from one place."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema

from metergate.domain.entitlements import Reason, Source
from metergate.domain.records import (
    MAX_QUANTITY,
    QUANTITY_PRECISION,
    QUANTITY_SCALE,
    Enforcement,
    FeatureKind,
)

MAX_BATCH_CHECKS = 100
MAX_BATCH_EVENTS = 1000

Identifier = Annotated[str, Field(min_length=1, max_length=256)]
UNITS_PATTERN = r"^\d{1,29}(\.\d{1,9})?$"


def _no_float(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError(
            f'a fraction must travel as a decimal string (e.g. "{value!r}"): JSON fractions are binary floats'
        )
    if isinstance(value, bool):
        raise ValueError("expected an integer or a decimal string, got a boolean")
    if isinstance(value, str) and not re.fullmatch(UNITS_PATTERN, value):
        raise ValueError("expected a decimal string of at most 29 digits before the point and 9 after, >= 0")
    return value


#: a non-negative exact quantity: a JSON integer or a decimal string (never a float)
Units = Annotated[
    Decimal,
    BeforeValidator(_no_float),
    Field(
        ge=0,
        le=MAX_QUANTITY,
        max_digits=QUANTITY_PRECISION,
        decimal_places=QUANTITY_SCALE,
        allow_inf_nan=False,
    ),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": int(MAX_QUANTITY)},
                {"type": "string", "pattern": UNITS_PATTERN},
            ]
        }
    ),
]
DecimalText = Annotated[str, Field(pattern=r"^-?\d+(\.\d+)?$", description="an exact decimal, as a string")]


class Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CheckRequest(Body):
    customer_id: Identifier
    feature: Identifier
    requested_units: Units = Decimal(1)
    subject_id: Identifier | None = None


class BatchCheckRequest(Body):
    checks: list[CheckRequest] = Field(min_length=1, max_length=MAX_BATCH_CHECKS)


class DecisionBody(Body):
    has_access: bool
    reason: Reason
    message: str
    customer_id: str
    feature: str
    kind: FeatureKind | None
    enforcement: Enforcement | None
    usage: DecimalText | None
    included: DecimalText | None
    limit: DecimalText | None
    remaining: DecimalText | None
    requested_units: DecimalText
    overage_units: DecimalText | None
    config_value: str | None
    period_start: datetime | None
    period_end: datetime | None
    as_of: datetime | None
    stale: bool
    source: Source


class BatchDecisionBody(Body):
    decisions: list[DecisionBody]


class CustomerEntitlementsBody(Body):
    customer_id: str
    features: list[DecisionBody]
    as_of: datetime | None
    stale: bool
    source: Source


class UsageEventIn(BaseModel):
    """A usage event as JSON (`timestamp` defaults to the time of arrival)."""

    model_config = ConfigDict(extra="forbid")
    event_id: Identifier
    customer_id: Identifier
    subject_id: Identifier | None = None
    meter: Identifier
    quantity: Units
    timestamp: datetime | None = None
    properties: dict[str, str] = Field(default_factory=dict)
    source: str | None = None


class CloudEventData(BaseModel):
    model_config = ConfigDict(extra="allow")
    quantity: Units
    subject_id: Identifier | None = None
    properties: dict[str, str] = Field(default_factory=dict)


class CloudEventIn(BaseModel):
    """CloudEvents 1.0 (structured JSON): `subject` = customer, `type` = meter, `id` = event_id."""

    model_config = ConfigDict(extra="allow")
    specversion: Literal["1.0"]
    id: Identifier
    source: str = Field(min_length=1)
    type: Identifier
    subject: Identifier
    time: datetime | None = None
    datacontenttype: str | None = None
    data: CloudEventData


class EventReceiptBody(Body):
    index: int
    event_id: str | None = None
    status: Literal["accepted", "duplicate", "rejected"]
    reason: str | None = None
    field: str | None = None
    message: str | None = None
    partition: int | None = None
    offset: int | None = None


class IngestBody(Body):
    accepted: int
    duplicate: int
    rejected: int
    events: list[EventReceiptBody]


class ErrorBody(Body):
    reason: str
    field: str | None = None
    message: str


class HealthBody(Body):
    ready: bool
    source: Source
    stale: bool
    as_of: datetime | None


def one_line(exc: ValidationError, prefix: str = "") -> tuple[str, str]:
    """(field, 'field: what is wrong (got ...)') for the first error pydantic found."""
    first = exc.errors()[0]
    field = (
        prefix + ".".join(str(part) for part in first["loc"])
        if first["loc"]
        else prefix.rstrip(".") or "body"
    )
    kind = first["type"]
    if kind == "missing":
        return field, f"{field}: required field is missing"
    if kind == "extra_forbidden":
        return field, f"{field}: unknown field"
    message = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
    return field, f"{field}: {message}{shown}"


def _schema(
    model: type[BaseModel], components: dict[str, Any], mode: Literal["validation", "serialization"]
) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def openapi() -> dict[str, Any]:
    components: dict[str, Any] = {}
    ref = {
        m.__name__: _schema(m, components, "validation")
        for m in (
            CheckRequest,
            BatchCheckRequest,
            UsageEventIn,
            CloudEventIn,
        )
    }
    ref |= {
        m.__name__: _schema(m, components, "serialization")
        for m in (
            DecisionBody,
            BatchDecisionBody,
            CustomerEntitlementsBody,
            IngestBody,
            ErrorBody,
            HealthBody,
        )
    }

    def json_body(name: str) -> dict[str, Any]:
        return {"application/json": {"schema": ref[name]}}

    def errors(*codes: int) -> dict[str, Any]:
        text = {
            400: "bad request: the message names the field",
            401: "no API key, or not a valid one",
            403: "the key lacks the scope, or is not bound to this customer",
            404: "not known here",
            503: "not ready",
        }
        return {str(code): {"description": text[code], "content": json_body("ErrorBody")} for code in codes}

    secured: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]
    # Each event is checked on its own and answered in the reply (`rejected` with field and reason),
    # so one bad event never blocks the others: the body schema only asks for objects; each object
    # should be a UsageEventIn (application/json) or a CloudEventIn (CloudEvents).
    one = {
        "type": "object",
        "description": "a UsageEventIn (see components); one that is not is answered as rejected",
    }
    events_schema = {
        "oneOf": [one, {"type": "array", "items": one, "minItems": 1, "maxItems": MAX_BATCH_EVENTS}]
    }
    cloud_one = {
        "type": "object",
        "description": "a CloudEventIn (see components); one that is not is answered as rejected",
    }
    cloud_batch = {"type": "array", "items": cloud_one, "minItems": 1, "maxItems": MAX_BATCH_EVENTS}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "metergate entitlements sidecar",
            "version": "1",
            "description": "Entitlement checks answered from local state, and usage reporting. "
            "Every /v1 endpoint needs an API key (header `X-API-Key` or `Authorization: Bearer`) with the "
            "scope named in the operation; a key bound to customers sees only those. Decimals travel as strings.",
        },
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "paths": {
            "/v1/entitlements/check": {
                "post": {
                    "operationId": "check",
                    "summary": "May the customer use requested_units more of the feature now? (scope: check)",
                    "security": secured,
                    "requestBody": {"required": True, "content": json_body("CheckRequest")},
                    "responses": {
                        "200": {"description": "the decision", "content": json_body("DecisionBody")},
                        **errors(400, 401, 403),
                    },
                }
            },
            "/v1/entitlements/check:batch": {
                "post": {
                    "operationId": "checkBatch",
                    "summary": f"Up to {MAX_BATCH_CHECKS} checks in one request (scope: check)",
                    "security": secured,
                    "requestBody": {"required": True, "content": json_body("BatchCheckRequest")},
                    "responses": {
                        "200": {
                            "description": "one decision per check, in order",
                            "content": json_body("BatchDecisionBody"),
                        },
                        **errors(400, 401, 403),
                    },
                }
            },
            "/v1/customers/{customer_id}/entitlements": {
                "get": {
                    "operationId": "customerEntitlements",
                    "summary": "Every feature of one customer with its usage and limits (scope: check)",
                    "security": secured,
                    "parameters": [
                        {
                            "name": "customer_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "the customer's features",
                            "content": json_body("CustomerEntitlementsBody"),
                        },
                        **errors(401, 403, 404),
                    },
                }
            },
            "/v1/events": {
                "post": {
                    "operationId": "ingest",
                    "summary": f"Report usage: one event or up to {MAX_BATCH_EVENTS}, as JSON or CloudEvents (scope: ingest)",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": events_schema},
                            "application/cloudevents+json": {"schema": cloud_one},
                            "application/cloudevents-batch+json": {"schema": cloud_batch},
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "what became of each event",
                            "content": json_body("IngestBody"),
                        },
                        **errors(400, 401, 403),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Ready once the local state has caught up with the topics",
                    "security": [],
                    "responses": {
                        "200": {"description": "ready", "content": json_body("HealthBody")},
                        "503": {"description": "not caught up yet", "content": json_body("HealthBody")},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (scope: admin)",
                    "security": secured,
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **errors(401, 403),
                    },
                }
            },
        },
    }
