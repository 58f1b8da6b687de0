"""The admin API's request and response bodies, as models: they validate requests and make the
OpenAPI document (`openapi()`), so the document and the behaviour come from one place.

Quantities and money travel as JSON integers or decimal strings, never as floats (the sidecar's
`Units`); moments as RFC 3339 with an offset."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    WithJsonSchema,
)

from metergate.domain.records import Enforcement, FeatureKind, PricingModel, ResetPeriod
from metergate.domain.subscriptions import When
from metergate_services.entitlements.api import DecimalText, ErrorBody, Identifier, Units

PROBLEM_JSON = "application/problem+json"

Currency = Annotated[str, Field(pattern=r"^[A-Za-z]{3}$", description="ISO 4217, e.g. USD")]
Version = Annotated[StrictInt, Field(ge=1, le=2_147_483_647)]
Quantity = Annotated[StrictInt, Field(ge=0, le=1_000_000_000)]
Value = Annotated[str, Field(min_length=1, max_length=1024)] | Annotated[StrictInt, Field(ge=0, le=10**29)]

#: moments a billing period can be computed around: later ones overflow the calendar
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def bounded(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("expected an RFC 3339 moment with an offset such as 2026-12-15T00:00:00Z")
    if not EARLIEST <= moment < LATEST:
        raise ValueError(f"expected a moment from {EARLIEST.year} to before {LATEST.year}")
    return moment


Moment = Annotated[AwareDatetime, AfterValidator(bounded)]


def _at(value: Any) -> When | datetime:
    if isinstance(value, str) and value in (When.IMMEDIATELY.value, When.PERIOD_END.value):
        return When(value)
    moment = None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            moment = None
    if moment is None or moment.tzinfo is None:
        raise ValueError(
            "expected immediately, period_end or an RFC 3339 moment with an offset such as 2026-12-15T00:00:00Z"
        )
    return bounded(moment)


#: when a change takes effect: now, at the end of the current billing period, or a later moment
At = Annotated[
    When | datetime,
    PlainValidator(_at),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "enum": ["immediately", "period_end"]},
                {"type": "string", "format": "date-time"},
            ]
        }
    ),
]


class Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TierIn(Body):
    up_to: Units | None = None
    unit_price: Units
    flat_fee: Units = Decimal(0)


class PricingIn(Body):
    model: PricingModel = PricingModel.NONE
    unit_price: Units = Decimal(0)
    package_size: Units = Decimal(1)
    tiers: list[TierIn] = Field(default_factory=list, max_length=100)


class FeatureTermsIn(Body):
    """A feature's terms in a plan version or an add-on (its kind and meter are the feature's own)."""

    enabled: StrictBool | None = None
    config_value: Annotated[str, Field(max_length=1024)] | None = None
    included: Units | None = None
    limit: Units | None = None
    enforcement: Enforcement | None = None
    thresholds: list[Annotated[StrictInt, Field(ge=1, le=1000)]] | None = Field(default=None, max_length=20)
    pricing: PricingIn | None = None


Features = Annotated[dict[Identifier, FeatureTermsIn], Field(max_length=200)]


class PlanVersionIn(Body):
    version: Version | None = None  # default: the next number
    name: Annotated[str, Field(max_length=256)] | None = None
    currency: Currency = "USD"
    base_fee: Units = Decimal(0)
    reset_period: ResetPeriod = ResetPeriod.MONTHLY
    features: Features = Field(default_factory=dict)
    variable: list[Annotated[str, Field(min_length=1, max_length=300)]] = Field(
        default_factory=list, max_length=200
    )
    add_ons: list[Identifier] = Field(default_factory=list, max_length=200)


class AddOnIn(Body):
    key: Identifier
    name: Annotated[str, Field(max_length=256)] | None = None
    currency: Currency = "USD"
    fee: Units = Decimal(0)
    max_quantity: Annotated[StrictInt, Field(ge=1, le=1_000_000_000)] | None = None
    features: Features = Field(default_factory=dict)


class FeatureIn(Body):
    feature: Identifier
    kind: FeatureKind
    meter: Identifier | None = None  # metered features only
    description: Annotated[str, Field(max_length=1024)] | None = None


class CustomerIn(Body):
    customer_id: Identifier
    name: Annotated[str, Field(max_length=256)] | None = None


class OverridesIn(Body):
    base_fee: Units | None = None
    pricing: dict[Identifier, PricingIn] = Field(default_factory=dict, max_length=200)
    add_on_fees: dict[Identifier, Units] = Field(default_factory=dict, max_length=200)


class OverrideUpdateIn(OverridesIn):
    clear: StrictBool = False  # drop the subscription's overrides first


class SubscriptionIn(Body):
    subscription_id: Identifier | None = None  # default: the customer id
    customer_id: Identifier
    plan: Identifier
    version: Version | None = None  # default: the latest published
    start: Moment | None = None  # default: now
    anchor: Moment | None = None  # default: the start
    reset_period: ResetPeriod | None = None  # default: the plan version's
    add_ons: dict[Identifier, Quantity] = Field(default_factory=dict, max_length=200)
    variables: dict[Annotated[str, Field(min_length=1, max_length=300)], Value] = Field(
        default_factory=dict, max_length=200
    )
    overrides: OverridesIn = OverridesIn()


class ChangeIn(Body):
    plan: Identifier | None = None
    version: Version | None = None
    add_ons: dict[Identifier, Quantity] | None = Field(default=None, max_length=200)  # 0 removes
    variables: dict[Annotated[str, Field(min_length=1, max_length=300)], Value] | None = Field(
        default=None, max_length=200
    )
    overrides: OverrideUpdateIn | None = None
    at: At = When.IMMEDIATELY


class CancelIn(Body):
    at: At = When.IMMEDIATELY


# ---------------------------------------------------------------------------------------------
# responses


class TierBody(Body):
    up_to: DecimalText | None
    unit_price: DecimalText
    flat_fee: DecimalText


class PricingBody(Body):
    model: PricingModel
    unit_price: DecimalText
    package_size: DecimalText
    tiers: list[TierBody]


class FeatureBody(Body):
    feature: str
    kind: FeatureKind
    enabled: bool
    config_value: str | None
    meter: str | None
    included: DecimalText
    limit: DecimalText | None
    enforcement: Enforcement
    thresholds: list[int]
    pricing: PricingBody


class FeatureDefinitionBody(Body):
    feature: str
    kind: FeatureKind
    meter: str | None
    description: str | None


class FeatureListBody(Body):
    features: list[FeatureDefinitionBody]


class PublishedFeatureBody(FeatureDefinitionBody):
    created: bool


class AddOnBody(Body):
    key: str
    name: str | None
    currency: str
    fee: DecimalText
    max_quantity: int | None
    features: dict[str, FeatureBody]


class AddOnListBody(Body):
    add_ons: list[AddOnBody]


class PublishedAddOnBody(AddOnBody):
    created: bool


class PlanVersionBody(Body):
    plan: str
    version: int
    currency: str
    base_fee: DecimalText
    reset_period: ResetPeriod
    features: dict[str, FeatureBody]
    variable: list[str]
    add_ons: dict[str, AddOnBody]


class PublishedPlanVersionBody(PlanVersionBody):
    created: bool


class PlanBody(Body):
    plan: str
    name: str | None
    product: str | None
    versions: list[int]


class PlanListBody(Body):
    plans: list[PlanBody]


class OverridesBody(Body):
    base_fee: DecimalText | None
    pricing: dict[str, PricingBody]
    add_on_fees: dict[str, DecimalText]


class VersionBody(Body):
    subscription_id: str
    customer_id: str
    number: int
    plan: str
    plan_version: int
    effective_from: datetime
    effective_to: datetime | None
    anchor: datetime
    reset_period: ResetPeriod
    add_ons: dict[str, int]
    variables: dict[str, str]
    overrides: OverridesBody
    change: str


class SubscriptionBody(Body):
    subscription_id: str
    customer_id: str
    ends_at: datetime | None
    versions: list[VersionBody]


class CustomerBody(Body):
    customer_id: str
    name: str | None
    created_at: datetime
    created_by: str
    created: bool | None = None
    subscriptions: list[SubscriptionBody]


class AuditEntryBody(Body):
    at: datetime
    who: str  # the API key's name, or `cli:<login>` for the command line
    action: str
    entity: str  # customer, subscription
    entity_id: str
    before: Any  # the entity as JSON before the change (null: it did not exist)
    after: Any
    changes: list[str]  # `path: before -> after` for each value that differs


class AuditBody(Body):
    entries: list[AuditEntryBody]


class FeeLineBody(Body):
    segment_start: datetime
    segment_end: datetime
    plan: str
    plan_version: int
    charge: str
    feature: str
    quantity: DecimalText
    amount: DecimalText
    currency: str
    detail: str


class FeesBody(Body):
    period_start: datetime
    period_end: datetime
    currency: str
    total: DecimalText
    lines: list[FeeLineBody]


class PreviewBody(Body):
    subscription: SubscriptionBody
    before: FeesBody
    after: FeesBody


class ProblemBody(ErrorBody):
    """An error as `application/problem+json` (RFC 9457): `detail` (= `message`) is one line naming
    the field, which `field` holds; `reason` is a stable code."""

    type: str = "about:blank"
    title: str  # the HTTP status phrase
    status: int
    detail: str


class HealthBody(Body):
    ready: bool
    message: str | None = None


def _schema(
    model: type[BaseModel], components: dict[str, Any], mode: Literal["validation", "serialization"]
) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


REQUESTS = (FeatureIn, PlanVersionIn, AddOnIn, CustomerIn, SubscriptionIn, ChangeIn, CancelIn)
RESPONSES = (
    FeatureListBody,
    PublishedFeatureBody,
    PlanListBody,
    PlanBody,
    PlanVersionBody,
    PublishedPlanVersionBody,
    AddOnListBody,
    AddOnBody,
    PublishedAddOnBody,
    CustomerBody,
    SubscriptionBody,
    AuditBody,
    FeesBody,
    PreviewBody,
    ProblemBody,
    HealthBody,
)

ERRORS = {
    400: "bad request (a body, path or query value; a query parameter the operation does not take): the message names the field",
    401: "no API key, or not a valid one",
    403: "the key lacks the admin scope",
    404: "not known here",
    409: "exists already with other content (published terms are never edited)",
    503: "PostgreSQL unreachable",
}


def openapi() -> dict[str, Any]:
    components: dict[str, Any] = {}
    ref = {m.__name__: _schema(m, components, "validation") for m in REQUESTS}
    ref |= {m.__name__: _schema(m, components, "serialization") for m in RESPONSES}
    secured: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]

    def content(name: str) -> dict[str, Any]:
        return {"application/json": {"schema": ref[name]}}

    def param(name: str, kind: str = "string", where: str = "path", required: bool = True) -> dict[str, Any]:
        schema: dict[str, Any] = (
            {"type": "string", "minLength": 1, "maxLength": 256}
            if kind == "string"
            else {"type": "integer", "minimum": 1, "maximum": 2_147_483_647}
            if kind == "integer"
            else {"type": "string", "format": "date-time"}
        )
        return {"name": name, "in": where, "required": required, "schema": schema}

    def operation(
        operation_id: str,
        summary: str,
        ok: tuple[int, str, str],
        *,
        body: str | None = None,
        params: tuple[dict[str, Any], ...] = (),
        errors: tuple[int, ...] = (400, 401, 403, 404),
        again: str | None = None,
    ) -> dict[str, Any]:
        status, description, schema = ok
        found: dict[str, Any] = {
            "operationId": operation_id,
            "summary": summary,
            "security": secured,
            "responses": {
                str(status): {"description": description, "content": content(schema)},
                **({"200": {"description": again, "content": content(schema)}} if again else {}),
                **{
                    str(code): {
                        "description": ERRORS[code],
                        "content": {PROBLEM_JSON: {"schema": ref["ProblemBody"]}},
                    }
                    for code in (*errors, 503)
                },
            },
        }
        if params:
            found["parameters"] = list(params)
        if body is not None:
            found["requestBody"] = {"required": True, "content": content(body)}
        return found

    subscription = param("subscription_id")
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "metergate admin API",
            "version": "1",
            "description": (
                "Plans, add-ons, customers and subscriptions in PostgreSQL, the system of record. Every "
                "change is a new dated version, audited with the API key's name and relayed to "
                "entitlements.snapshots. Every operation needs a key with the admin scope."
            ),
        },
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "paths": {
            "/v1/features": {
                "get": operation(
                    "listFeatures",
                    "Every feature plans and add-ons may grant",
                    (200, "the features", "FeatureListBody"),
                    errors=(400, 401, 403),
                ),
                "post": operation(
                    "publishFeature",
                    "Define a feature (its kind and meter never change)",
                    (201, "defined (created true)", "PublishedFeatureBody"),
                    body="FeatureIn",
                    errors=(400, 401, 403, 409),
                    again="defined before the same way: nothing written (created false)",
                ),
            },
            "/v1/plans": {
                "get": operation(
                    "listPlans",
                    "Every plan with its published versions",
                    (200, "the plans", "PlanListBody"),
                    errors=(400, 401, 403),
                )
            },
            "/v1/plans/{plan}": {
                "get": operation(
                    "showPlan",
                    "A plan and its version numbers",
                    (200, "the plan", "PlanBody"),
                    params=(param("plan"),),
                )
            },
            "/v1/plans/{plan}/versions": {
                "post": operation(
                    "publishPlanVersion",
                    "Publish a new version of a plan (the next number by default; a published one is never edited)",
                    (
                        201,
                        "published (created true)",
                        "PublishedPlanVersionBody",
                    ),
                    body="PlanVersionIn",
                    again="the same terms were published before: nothing written (created false)",
                    params=(param("plan"),),
                    errors=(400, 401, 403, 409),
                )
            },
            "/v1/plans/{plan}/versions/{version}": {
                "get": operation(
                    "showPlanVersion",
                    "A published plan version's terms",
                    (200, "the version", "PlanVersionBody"),
                    params=(param("plan"), param("version", "integer")),
                )
            },
            "/v1/add-ons": {
                "get": operation(
                    "listAddOns",
                    "Every published add-on",
                    (200, "the add-ons", "AddOnListBody"),
                    errors=(400, 401, 403),
                ),
                "post": operation(
                    "publishAddOn",
                    "Publish an add-on (never edited once published)",
                    (
                        201,
                        "published (created true)",
                        "PublishedAddOnBody",
                    ),
                    body="AddOnIn",
                    again="the same terms were published before: nothing written (created false)",
                    errors=(400, 401, 403, 409),
                ),
            },
            "/v1/add-ons/{key}": {
                "get": operation(
                    "showAddOn",
                    "A published add-on",
                    (200, "the add-on", "AddOnBody"),
                    params=(param("key"),),
                )
            },
            "/v1/customers": {
                "post": operation(
                    "createCustomer",
                    "Record a customer (again with the same name: nothing changes)",
                    (201, "recorded (created true)", "CustomerBody"),
                    body="CustomerIn",
                    again="recorded before with the same name: nothing written (created false)",
                    errors=(400, 401, 403, 409),
                )
            },
            "/v1/customers/{customer_id}": {
                "get": operation(
                    "showCustomer",
                    "A customer and its subscriptions",
                    (200, "the customer", "CustomerBody"),
                    params=(param("customer_id"),),
                )
            },
            "/v1/customers/{customer_id}/audit": {
                "get": operation(
                    "customerAudit",
                    "Every change of the customer and of its subscriptions: who, when, before and after",
                    (200, "the audit trail", "AuditBody"),
                    params=(param("customer_id"),),
                )
            },
            "/v1/subscriptions": {
                "post": operation(
                    "createSubscription",
                    "Subscribe a customer to a published plan version",
                    (201, "the subscription", "SubscriptionBody"),
                    body="SubscriptionIn",
                    errors=(400, 401, 403, 404, 409),
                )
            },
            "/v1/subscriptions/{subscription_id}": {
                "get": operation(
                    "showSubscription",
                    "A subscription's dated versions",
                    (200, "the subscription", "SubscriptionBody"),
                    params=(subscription,),
                )
            },
            "/v1/subscriptions/{subscription_id}/changes": {
                "post": operation(
                    "changeSubscription",
                    "A new dated version: plan or version, add-ons, negotiated values, price overrides; now, at period end or later",
                    (200, "the subscription", "SubscriptionBody"),
                    body="ChangeIn",
                    params=(subscription,),
                )
            },
            "/v1/subscriptions/{subscription_id}/changes:preview": {
                "post": operation(
                    "previewChange",
                    "What a change would bill: the prorated base and add-on fees of the period it takes effect in, as it is and with the change (nothing written)",
                    (200, "the preview", "PreviewBody"),
                    body="ChangeIn",
                    params=(subscription,),
                )
            },
            "/v1/subscriptions/{subscription_id}/cancel": {
                "post": operation(
                    "cancelSubscription",
                    "End the subscription at a moment (access and fees end then)",
                    (200, "the subscription", "SubscriptionBody"),
                    body="CancelIn",
                    params=(subscription,),
                )
            },
            "/v1/subscriptions/{subscription_id}/unschedule": {
                "post": operation(
                    "unscheduleSubscription",
                    "Drop the change or cancellation scheduled for later",
                    (200, "the subscription", "SubscriptionBody"),
                    params=(subscription,),
                )
            },
            "/v1/subscriptions/{subscription_id}/audit": {
                "get": operation(
                    "subscriptionAudit",
                    "Who changed it, when, before and after",
                    (200, "the audit trail", "AuditBody"),
                    params=(subscription,),
                )
            },
            "/v1/subscriptions/{subscription_id}/fees": {
                "get": operation(
                    "subscriptionFees",
                    "The base and add-on fees of a billing period, prorated by time in force",
                    (200, "the fees", "FeesBody"),
                    params=(subscription, param("period_of", "date-time", "query", required=False)),
                )
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Ready when PostgreSQL answers",
                    "security": [],
                    "responses": {
                        "200": {"description": "ready", "content": content("HealthBody")},
                        "503": {"description": "PostgreSQL unreachable", "content": content("HealthBody")},
                    },
                }
            },
        },
    }
