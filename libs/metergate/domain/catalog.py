"""The catalog file: meters, features, versioned plans and subscriptions, resolved to snapshots (pure).

The file (YAML, see `examples/catalog.yaml`):

    meters:
      <meter>: {aggregation: SUM|COUNT|MAX|LATEST|UNIQUE_COUNT, unique_property?, unit?, description?}
    features:
      <feature>: {kind: boolean|config|metered, meter?: <meter> (metered), description?}
    add_ons:                            # bought on top of a plan that allows them, in a quantity
      <add-on>:
        name?: ...
        currency?: USD                  # the plans allowing it are priced in it
        fee?: "80.00"                   # per unit, per billing period
        max_quantity?: <n>              # none: any quantity
        features:                       # per unit, same shape as a plan's: a boolean switches on,
          <feature>: ...                # a config value replaces, a metered one adds included/limit
    plans:
      <plan>:
        name?: ...
        versions:                       # immutable versions; or the fields of one version inline
          <n>:                          # (then `version: n`, default 1)
            currency?: USD
            base_fee?: "49.00"
            reset_period?: monthly      # daily|monthly|yearly, default for subscriptions
            features:
              <boolean feature>: true | false
              <config feature>: <value>
              <metered feature>:
                included?: 0            # units in the base fee
                limit?: <units> | null  # null / absent: unlimited
                enforcement?: none      # hard|soft|none
                thresholds?: [80, 90]   # percent of the limit
                pricing?: {model: none|per_unit|package|graduated|volume, unit_price?, package_size?,
                           tiers?: [{up_to: <units>|null, unit_price, flat_fee?}]}
            add_ons?: [<add-on>, ...]   # the add-ons this version allows
            variable?: [<config feature> | <metered feature>.included | <metered feature>.limit, ...]
                                        # negotiated per contract: each subscription gives its value
    subscriptions:
      <customer_id>:
        plan: <plan>
        version?: <n>                   # default: the plan's latest version
        id?: <subscription id>          # default: "<customer_id>:<plan>"
        anchor: 2024-01-31T00:00:00Z    # billing anchor (a date means midnight UTC)
        reset_period?: monthly
        add_ons?: {<add-on>: <quantity>}          # add-ons the version allows (0: none)
        variables?: {<variable path>: <value>}    # the contract's value of each negotiated path
        overrides?:                     # per-contract values, merged over the plan version
          base_fee?: ...
          currency?: ...
          add_on_fees?: {<add-on>: "70.00"}       # an add-on's fee per unit, for this contract
          features:
            <feature>: <same shape as in a plan; given fields replace the plan's, pricing as a whole>

Quantities are integers or decimal strings ("2.5"); prices are decimal strings, integers or plain
decimals (read through their literal, never as binary floats). Every error names its path inside the
file, e.g. `plans.pro.features.api_calls.included: expected an integer >= 0, got -5`; all errors of a
file are reported at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from metergate.domain.records import (
    PRICE_PRECISION,
    PRICE_SCALE,
    QUANTITY_PRECISION,
    QUANTITY_SCALE,
    Aggregation,
    Enforcement,
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    MeterDefinition,
    PriceTier,
    Pricing,
    PricingModel,
    ResetPeriod,
    check_decimal,
    utc_millis,
)
from metergate.errors import CatalogError, SubscriptionError

_MISSING = object()


@dataclass(frozen=True)
class FeatureDefinition:
    feature: str
    kind: FeatureKind
    meter: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class PlanVersion:
    plan: str
    version: int
    currency: str
    base_fee: Decimal
    reset_period: ResetPeriod
    features: Mapping[str, FeatureEntitlement]


#: negotiable fields of a metered feature (a config feature is negotiable by its name alone)
METERED_VARIABLES = ("included", "limit")


def negotiable(path: str, features: Mapping[str, FeatureEntitlement]) -> bool:
    """Whether `path` names an entitlement a contract may negotiate: a config feature by name, or
    `<metered feature>.included` / `.limit`."""
    feature, _, attribute = path.partition(".")
    found = features.get(feature)
    if found is None:
        return False
    if found.kind is FeatureKind.CONFIG:
        return not attribute
    return found.kind is FeatureKind.METERED and attribute in METERED_VARIABLES


@dataclass(frozen=True)
class AddOn:
    """Something a plan allows on top of it, bought in a quantity: its features and fee are per unit.

    Features: a boolean switches on, a config value replaces the plan's, a metered feature adds
    `included` and `limit` x quantity to the plan's (an unlimited plan stays unlimited); a metered
    feature the plan lacks is added with the add-on's pricing.
    """

    key: str
    currency: str
    fee: Decimal  # per unit, per billing period
    features: Mapping[str, FeatureEntitlement] = field(default_factory=dict)
    name: str | None = None
    max_quantity: int | None = None


@dataclass(frozen=True)
class PublishedPlan:
    """An immutable published plan version (`catalog.PlanVersion`) with what a subscription may add.

    `variable`: the negotiated entitlements of a custom plan, as paths: a config feature's name
    (`retention_days`) or `<metered feature>.included` / `.limit`. A subscription must give each.
    `add_ons`: the add-ons this version allows, by key.
    """

    terms: PlanVersion
    variable: frozenset[str] = frozenset()
    add_ons: Mapping[str, AddOn] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for path in sorted(self.variable):
            if not negotiable(path, self.terms.features):
                raise SubscriptionError(
                    f"variable.{path}: expected a config feature of {self.label} or "
                    "<metered feature>.included / .limit",
                    field=f"variable.{path}",
                )
        for key, add_on in self.add_ons.items():
            if key != add_on.key:
                raise SubscriptionError(
                    f"add_ons.{key}: the add-on is keyed {add_on.key!r}", field=f"add_ons.{key}"
                )

    @property
    def plan(self) -> str:
        return self.terms.plan

    @property
    def version(self) -> int:
        return self.terms.version

    @property
    def label(self) -> str:
        return f"{self.terms.plan} v{self.terms.version}"


@dataclass(frozen=True)
class Subscription:
    customer_id: str
    subscription_id: str
    plan: str
    version: int
    anchor: datetime
    reset_period: ResetPeriod
    currency: str
    base_fee: Decimal  # the plan version's or the override (add-on fees come on top)
    features: tuple[FeatureEntitlement, ...]  # the plan version's merged with `overrides.features`
    add_ons: Mapping[str, int] = field(default_factory=dict)  # add-on key -> quantity (> 0)
    variables: Mapping[str, Decimal | str] = field(default_factory=dict)  # negotiated path -> value
    add_on_fees: Mapping[str, Decimal] = field(default_factory=dict)  # price overrides per add-on unit

    def contract(self, plan: PublishedPlan) -> PublishedPlan:
        """`plan` (this subscription's version) with the terms its `overrides` give: what its
        add-ons, negotiated values and add-on fees apply on."""
        terms = replace(
            plan.terms,
            currency=self.currency,
            base_fee=self.base_fee,
            features={feature.feature: feature for feature in self.features},
        )
        return PublishedPlan(terms, variable=plan.variable, add_ons=plan.add_ons)


@dataclass(frozen=True)
class Catalog:
    meters: Mapping[str, MeterDefinition]
    features: Mapping[str, FeatureDefinition]
    plans: Mapping[str, Mapping[int, PublishedPlan]]
    subscriptions: Mapping[str, Subscription]
    add_ons: Mapping[str, AddOn] = field(default_factory=dict)

    def snapshots(self, *, version: int, updated_at: datetime) -> list[EntitlementSnapshot]:
        """One resolved snapshot per subscribed customer, all carrying `version`: the terms in force
        by the subscriptions' one rule (plan, negotiated values, add-ons x quantity, price overrides)."""
        from metergate.domain import subscriptions as rules  # it builds on this module

        found = []
        for sub in self.subscriptions.values():
            history = _resolved(sub, self.plans[sub.plan][sub.version])
            snapshot = rules.snapshot_at(history, sub.anchor, version=version, updated_at=updated_at)
            assert snapshot is not None  # a subscription is in force from its start
            found.append(snapshot)
        return found


def _resolved(sub: Subscription, plan: PublishedPlan) -> Any:
    """A file subscription as a one-version `subscriptions.History` from its anchor, by the
    subscriptions' rules (the add-ons its version allows, its negotiated values, its add-on fees);
    raises SubscriptionError naming the field."""
    from metergate.domain import subscriptions as rules  # it builds on this module

    return rules.create(
        subscription_id=sub.subscription_id,
        customer_id=sub.customer_id,
        plan=sub.contract(plan),
        start=sub.anchor,
        now=sub.anchor,
        anchor=sub.anchor,
        reset_period=sub.reset_period,
        add_ons=sub.add_ons,
        variables=sub.variables,
        overrides=rules.PriceOverrides(add_on_fees=sub.add_on_fees),
    )


@dataclass
class _Reader:
    """Walks the parsed document, collecting every error with its path."""

    errors: list[str] = field(default_factory=list)

    def fail(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def mapping(self, value: Any, path: str, *, required: bool = True) -> dict[str, Any] | None:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping, got {_shown(value)}")
            return None
        for key in value:
            if not isinstance(key, str | int) or isinstance(key, bool):
                self.fail(path, f"expected names as keys, got {_shown(key)}")
                return None
        return {str(key): item for key, item in value.items()}

    def keys(self, value: dict[str, Any], path: str, allowed: set[str]) -> None:
        for key in value:
            if key not in allowed:
                self.fail(f"{path}.{key}", f"unknown field (expected one of: {', '.join(sorted(allowed))})")

    def name(self, value: Any, path: str) -> str | None:
        if not isinstance(value, str) or not value.strip() or len(value) > 256:
            self.fail(path, f"expected a name (1-256 characters), got {_shown(value)}")
            return None
        return value

    def text(self, value: Any, path: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(path, f"expected text, got {_shown(value)}")
            return None
        return value

    def choice(self, value: Any, path: str, enum_type: Any, default: Any = _MISSING) -> Any:
        if value is None and default is not _MISSING:
            return default
        try:
            return enum_type(value)
        except ValueError:
            options = ", ".join(member.value for member in enum_type)
            self.fail(path, f"expected one of {options}, got {_shown(value)}")
            return None

    def quantity(self, value: Any, path: str) -> Decimal | None:
        number = _number(value)
        if number is None or number < 0:
            if isinstance(value, int) and not isinstance(value, bool):
                self.fail(path, f"expected an integer >= 0, got {value}")
            else:
                self.fail(
                    path, f'expected an integer >= 0 or a decimal string like "2.5", got {_shown(value)}'
                )
            return None
        return self._checked(number, path, QUANTITY_SCALE, QUANTITY_PRECISION)

    def price(self, value: Any, path: str) -> Decimal | None:
        number = _number(value)
        if number is None or number < 0:
            self.fail(path, f'expected a price >= 0 such as "0.002", got {_shown(value)}')
            return None
        return self._checked(number, path, PRICE_SCALE, PRICE_PRECISION)

    def _checked(self, number: Decimal, path: str, scale: int, precision: int) -> Decimal | None:
        try:
            return check_decimal(number, name="value", scale=scale, precision=precision, allow_negative=False)
        except ValueError as exc:
            self.fail(path, str(exc).removeprefix("value "))
            return None

    def integer(self, value: Any, path: str, *, low: int, high: int) -> int | None:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            self.fail(path, f"expected an integer from {low} to {high}, got {_shown(value)}")
            return None
        return value

    def moment(self, value: Any, path: str) -> datetime | None:
        if isinstance(value, datetime):
            moment = value if value.tzinfo else value.replace(tzinfo=UTC)
            return utc_millis(moment)
        if isinstance(value, date):
            return datetime.combine(value, time(0), tzinfo=UTC)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                pass
            else:
                return utc_millis(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
        self.fail(
            path, f"expected a date or an ISO 8601 timestamp like 2024-01-31T00:00:00Z, got {_shown(value)}"
        )
        return None


def _shown(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value) if isinstance(value, str) else str(value)


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        value = repr(value)  # the literal as written in the file, not the binary fraction
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


_METER_FIELDS = {"aggregation", "unique_property", "unit", "description"}
_FEATURE_FIELDS = {"kind", "meter", "description"}
_METERED_FIELDS = {"included", "limit", "enforcement", "thresholds", "pricing", "enabled"}
_PRICING_FIELDS = {"model", "unit_price", "package_size", "tiers"}
_TIER_FIELDS = {"up_to", "unit_price", "flat_fee"}
_VERSION_FIELDS = {"currency", "base_fee", "reset_period", "features", "add_ons", "variable"}
_PLAN_FIELDS = {"name", "description", "versions", "version"} | _VERSION_FIELDS
_ADD_ON_FIELDS = {"name", "currency", "fee", "max_quantity", "features"}
_SUBSCRIPTION_FIELDS = {
    "plan",
    "version",
    "id",
    "anchor",
    "reset_period",
    "add_ons",
    "variables",
    "overrides",
}
_OVERRIDE_FIELDS = {"base_fee", "currency", "features", "add_on_fees"}


def parse_catalog(document: Any, *, source: str = "catalog") -> Catalog:
    """Validate a parsed catalog document; raise CatalogError listing every problem with its path."""
    reader = _Reader()
    root = reader.mapping(document, "(file)")
    if root is None:
        raise _error(reader, source)
    reader.keys(root, "(file)", {"meters", "features", "add_ons", "plans", "subscriptions"})
    meters = _meters(reader, root.get("meters"))
    features = _features(reader, root.get("features"), meters)
    add_ons = _add_ons(reader, root.get("add_ons"), features)
    plans = _plans(reader, root.get("plans"), features, add_ons)
    subscriptions = _subscriptions(reader, root.get("subscriptions"), plans, features, meters)
    if reader.errors:
        raise _error(reader, source)
    return Catalog(
        meters=meters, features=features, plans=plans, subscriptions=subscriptions, add_ons=add_ons
    )


def _error(reader: _Reader, source: str) -> CatalogError:
    lines = [f"{source}: {message}" for message in reader.errors]
    error = CatalogError("\n".join(lines), field=reader.errors[0].split(":", 1)[0])
    error.errors = lines  # type: ignore[attr-defined]
    return error


def _meters(reader: _Reader, value: Any) -> dict[str, MeterDefinition]:
    found: dict[str, MeterDefinition] = {}
    entries = reader.mapping(value, "meters", required=False) or {}
    for name, spec in entries.items():
        path = f"meters.{name}"
        body = reader.mapping(spec, path)
        if body is None or reader.name(name, path) is None:
            continue
        reader.keys(body, path, _METER_FIELDS)
        aggregation = reader.choice(body.get("aggregation"), f"{path}.aggregation", Aggregation)
        unique = reader.text(body.get("unique_property"), f"{path}.unique_property")
        if aggregation is Aggregation.UNIQUE_COUNT and not unique:
            reader.fail(
                f"{path}.unique_property", "UNIQUE_COUNT needs the property whose distinct values it counts"
            )
        if aggregation is None:
            continue
        found[name] = MeterDefinition(
            meter=name,
            aggregation=aggregation,
            unique_property=unique if aggregation is Aggregation.UNIQUE_COUNT else None,
            unit=reader.text(body.get("unit"), f"{path}.unit"),
            description=reader.text(body.get("description"), f"{path}.description"),
        )
    return found


def _features(
    reader: _Reader, value: Any, meters: Mapping[str, MeterDefinition]
) -> dict[str, FeatureDefinition]:
    found: dict[str, FeatureDefinition] = {}
    entries = reader.mapping(value, "features", required=False) or {}
    for name, spec in entries.items():
        path = f"features.{name}"
        body = reader.mapping(spec, path)
        if body is None or reader.name(name, path) is None:
            continue
        reader.keys(body, path, _FEATURE_FIELDS)
        kind = reader.choice(body.get("kind"), f"{path}.kind", FeatureKind)
        meter = body.get("meter")
        if kind is FeatureKind.METERED:
            if meter is None:
                meter = name if name in meters else None
            if meter not in meters:
                known = ", ".join(sorted(meters)) or "none defined"
                reader.fail(
                    f"{path}.meter", f"expected a meter of this catalog ({known}), got {_shown(meter)}"
                )
                continue
        elif meter is not None:
            reader.fail(f"{path}.meter", "only metered features have a meter")
        if kind is None:
            continue
        found[name] = FeatureDefinition(
            feature=name,
            kind=kind,
            meter=meter if kind is FeatureKind.METERED else None,
            description=reader.text(body.get("description"), f"{path}.description"),
        )
    return found


def _pricing(reader: _Reader, value: Any, path: str) -> Pricing | None:
    body = reader.mapping(value, path)
    if body is None:
        return None
    reader.keys(body, path, _PRICING_FIELDS)
    model = reader.choice(body.get("model"), f"{path}.model", PricingModel, PricingModel.NONE)
    if model is None:
        return None
    fields: dict[str, Any] = {"model": model}
    if model in (PricingModel.PER_UNIT, PricingModel.PACKAGE):
        if "unit_price" not in body:
            reader.fail(f"{path}.unit_price", f"{model.value} pricing needs a unit_price")
        else:
            fields["unit_price"] = reader.price(body["unit_price"], f"{path}.unit_price")
    if model is PricingModel.PACKAGE:
        size = reader.quantity(body.get("package_size"), f"{path}.package_size")
        if size is not None and size <= 0:
            reader.fail(f"{path}.package_size", f"expected a package size > 0, got {size}")
        fields["package_size"] = size
    if model in (PricingModel.GRADUATED, PricingModel.VOLUME):
        fields["tiers"] = _tiers(reader, body.get("tiers"), f"{path}.tiers")
    elif "tiers" in body:
        reader.fail(f"{path}.tiers", "only graduated and volume pricing have tiers")
    if any(item is None for item in fields.values()):
        return None
    return Pricing(**fields)


def _tiers(reader: _Reader, value: Any, path: str) -> tuple[PriceTier, ...] | None:
    if not isinstance(value, list) or not value:
        reader.fail(path, f"expected a non-empty list of tiers, got {_shown(value)}")
        return None
    tiers: list[PriceTier] = []
    previous: Decimal | None = None
    ok = True
    for index, spec in enumerate(value):
        tier_path = f"{path}.{index}"
        body = reader.mapping(spec, tier_path)
        if body is None:
            ok = False
            continue
        reader.keys(body, tier_path, _TIER_FIELDS)
        last = index == len(value) - 1
        up_to = body.get("up_to")
        bound: Decimal | None = None
        if up_to is None:
            if not last:
                reader.fail(f"{tier_path}.up_to", "only the last tier may be unbounded (up_to: null)")
                ok = False
        else:
            bound = reader.quantity(up_to, f"{tier_path}.up_to")
            if bound is not None and previous is not None and bound <= previous:
                reader.fail(
                    f"{tier_path}.up_to", f"expected more than the previous tier's {previous}, got {bound}"
                )
                ok = False
            if last:
                reader.fail(f"{tier_path}.up_to", "the last tier must be unbounded (up_to: null)")
                ok = False
        unit_price = reader.price(body.get("unit_price", 0), f"{tier_path}.unit_price")
        flat_fee = reader.price(body.get("flat_fee", 0), f"{tier_path}.flat_fee")
        if (up_to is not None and bound is None) or unit_price is None or flat_fee is None:
            ok = False
            continue
        previous = bound if bound is not None else previous
        tiers.append(PriceTier(up_to=bound, unit_price=unit_price, flat_fee=flat_fee))
    return tuple(tiers) if ok else None


def _entitlement(
    reader: _Reader,
    name: str,
    value: Any,
    path: str,
    features: Mapping[str, FeatureDefinition],
    base: FeatureEntitlement | None = None,
) -> FeatureEntitlement | None:
    definition = features.get(name)
    if definition is None:
        known = ", ".join(sorted(features)) or "none defined"
        reader.fail(path, f"unknown feature (features of this catalog: {known})")
        return None
    if definition.kind is FeatureKind.BOOLEAN:
        if not isinstance(value, bool):
            reader.fail(path, f"expected true or false for boolean feature {name}, got {_shown(value)}")
            return None
        return FeatureEntitlement(feature=name, kind=definition.kind, enabled=value)
    if definition.kind is FeatureKind.CONFIG:
        if isinstance(value, dict | list) or value is None:
            reader.fail(path, f"expected a value for config feature {name}, got {_shown(value)}")
            return None
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        return FeatureEntitlement(feature=name, kind=definition.kind, config_value=shown)
    body = reader.mapping(value, path, required=False)
    if body is None:
        return None
    reader.keys(body, path, _METERED_FIELDS)
    current = base or FeatureEntitlement(feature=name, kind=FeatureKind.METERED, meter=definition.meter)
    fields: dict[str, Any] = {}
    if "enabled" in body:
        if isinstance(body["enabled"], bool):
            fields["enabled"] = body["enabled"]
        else:
            reader.fail(f"{path}.enabled", f"expected true or false, got {_shown(body['enabled'])}")
    if "included" in body:
        fields["included"] = reader.quantity(body["included"], f"{path}.included")
    if "limit" in body:
        fields["limit"] = None if body["limit"] is None else reader.quantity(body["limit"], f"{path}.limit")
        if body["limit"] is not None and fields["limit"] is None:
            return None
    if "enforcement" in body:
        fields["enforcement"] = reader.choice(body["enforcement"], f"{path}.enforcement", Enforcement)
    if "thresholds" in body:
        raw = body["thresholds"]
        if not isinstance(raw, list):
            reader.fail(
                f"{path}.thresholds", f"expected a list of percentages such as [80, 90], got {_shown(raw)}"
            )
            fields["thresholds"] = None
        else:
            values = [
                reader.integer(item, f"{path}.thresholds.{i}", low=1, high=1000) for i, item in enumerate(raw)
            ]
            if None in values:
                fields["thresholds"] = None
            elif values != sorted(set(values)):  # type: ignore[type-var]
                reader.fail(
                    f"{path}.thresholds",
                    f"expected increasing percentages, each once, such as [80, 90], got {raw}",
                )
                fields["thresholds"] = None
            else:
                fields["thresholds"] = tuple(values)
    if "pricing" in body:
        fields["pricing"] = _pricing(reader, body["pricing"], f"{path}.pricing")
    if any(item is None for key, item in fields.items() if key != "limit"):
        return None
    merged = current.model_copy(update=fields)
    if merged.enforcement is Enforcement.HARD and merged.limit is None:
        reader.fail(f"{path}.enforcement", "hard enforcement needs a limit")
        return None
    if merged.limit is not None and merged.included > merged.limit:
        reader.fail(
            f"{path}.included",
            f"expected at most the limit ({_shown(merged.limit)}), got {_shown(merged.included)}",
        )
        return None
    if merged.thresholds and merged.limit is None:
        reader.fail(f"{path}.thresholds", "thresholds are percentages of a limit; set a limit")
        return None
    return FeatureEntitlement.model_validate(merged.model_dump())


def _currency(reader: _Reader, value: Any, path: str) -> str | None:
    if not isinstance(value, str) or len(value) != 3 or not value.isascii() or not value.isalpha():
        reader.fail(path, f"expected an ISO 4217 code such as USD, got {_shown(value)}")
        return None
    return value.upper()


def _add_ons(reader: _Reader, value: Any, features: Mapping[str, FeatureDefinition]) -> dict[str, AddOn]:
    found: dict[str, AddOn] = {}
    entries = reader.mapping(value, "add_ons", required=False) or {}
    for key, spec in entries.items():
        path = f"add_ons.{key}"
        body = reader.mapping(spec, path)
        if body is None or reader.name(key, path) is None:
            continue
        reader.keys(body, path, _ADD_ON_FIELDS)
        currency = _currency(reader, body.get("currency", "USD"), f"{path}.currency")
        fee = reader.price(body.get("fee", 0), f"{path}.fee")
        most = body.get("max_quantity")
        if most is not None:
            most = reader.integer(most, f"{path}.max_quantity", low=1, high=1_000_000_000)
        granted: dict[str, FeatureEntitlement] = {}
        terms = reader.mapping(body.get("features"), f"{path}.features", required=False) or {}
        for name, feature_spec in terms.items():
            entitlement = _entitlement(reader, name, feature_spec, f"{path}.features.{name}", features)
            if entitlement is not None:
                granted[name] = entitlement
        if currency is None or fee is None or ("max_quantity" in body and most is None):
            continue
        found[key] = AddOn(
            key=key,
            currency=currency,
            fee=fee,
            features=granted,
            name=reader.text(body.get("name"), f"{path}.name"),
            max_quantity=most,
        )
    return found


def _version_body(
    reader: _Reader,
    plan: str,
    number: int,
    body: dict[str, Any],
    path: str,
    features: Mapping[str, FeatureDefinition],
    add_ons: Mapping[str, AddOn],
) -> PublishedPlan | None:
    currency = _currency(reader, body.get("currency", "USD"), f"{path}.currency")
    base_fee = reader.price(body.get("base_fee", 0), f"{path}.base_fee")
    reset = reader.choice(body.get("reset_period"), f"{path}.reset_period", ResetPeriod, ResetPeriod.MONTHLY)
    resolved: dict[str, FeatureEntitlement] = {}
    entries = reader.mapping(body.get("features"), f"{path}.features", required=False) or {}
    for name, spec in entries.items():
        entitlement = _entitlement(reader, name, spec, f"{path}.features.{name}", features)
        if entitlement is not None:
            resolved[name] = entitlement
    allowed: dict[str, AddOn] = {}
    raw_add_ons = body.get("add_ons", [])
    if not isinstance(raw_add_ons, list):
        reader.fail(
            f"{path}.add_ons", f"expected a list of add-ons such as [extra_seats], got {_shown(raw_add_ons)}"
        )
        raw_add_ons = []
    for index, key in enumerate(raw_add_ons):
        add_on = add_ons.get(key) if isinstance(key, str) else None
        if add_on is None:
            known = ", ".join(sorted(add_ons)) or "none defined"
            reader.fail(
                f"{path}.add_ons.{index}", f"expected an add-on of this catalog ({known}), got {_shown(key)}"
            )
        elif currency is not None and add_on.currency != currency:
            reader.fail(
                f"{path}.add_ons.{index}",
                f"add-on {key} is priced in {add_on.currency}, this version in {currency}",
            )
        else:
            allowed[key] = add_on
    variable: set[str] = set()
    raw_variable = body.get("variable", [])
    if not isinstance(raw_variable, list):
        reader.fail(
            f"{path}.variable",
            f"expected a list of negotiated paths such as [api_calls.limit], got {_shown(raw_variable)}",
        )
        raw_variable = []
    for index, item in enumerate(raw_variable):
        if not isinstance(item, str) or not negotiable(item, resolved):
            reader.fail(
                f"{path}.variable.{index}",
                "expected a config feature of this version or <metered feature>.included / .limit, "
                f"got {_shown(item)}",
            )
        elif item in variable:
            reader.fail(f"{path}.variable.{index}", f"{item} is given twice")
        else:
            variable.add(item)
    if base_fee is None or reset is None or currency is None:
        return None
    terms = PlanVersion(
        plan=plan, version=number, currency=currency, base_fee=base_fee, reset_period=reset, features=resolved
    )
    return PublishedPlan(terms, variable=frozenset(variable), add_ons=allowed)


def _plans(
    reader: _Reader,
    value: Any,
    features: Mapping[str, FeatureDefinition],
    add_ons: Mapping[str, AddOn],
) -> dict[str, dict[int, PublishedPlan]]:
    found: dict[str, dict[int, PublishedPlan]] = {}
    entries = reader.mapping(value, "plans", required=False) or {}
    for name, spec in entries.items():
        path = f"plans.{name}"
        body = reader.mapping(spec, path)
        if body is None or reader.name(name, path) is None:
            continue
        reader.keys(body, path, _PLAN_FIELDS)
        versions: dict[int, PublishedPlan] = {}
        if "versions" in body:
            inline = sorted(set(body) & _VERSION_FIELDS | ({"version"} & set(body)))
            if inline:
                reader.fail(
                    path, f"give either versions or the fields of one version inline, not both ({inline})"
                )
            raw_versions = reader.mapping(body["versions"], f"{path}.versions") or {}
            for key, version_spec in raw_versions.items():
                version_path = f"{path}.versions.{key}"
                number = int(key) if key.isdigit() else None
                if number is None or number < 1:
                    reader.fail(version_path, f"expected a version number >= 1 as the key, got {key!r}")
                    continue
                version_body = reader.mapping(version_spec, version_path)
                if version_body is None:
                    continue
                reader.keys(version_body, version_path, _VERSION_FIELDS)
                resolved = _version_body(reader, name, number, version_body, version_path, features, add_ons)
                if resolved is not None:
                    versions[number] = resolved
            if not raw_versions:
                reader.fail(f"{path}.versions", "expected at least one version")
        else:
            number = reader.integer(body.get("version", 1), f"{path}.version", low=1, high=1_000_000)
            resolved = _version_body(reader, name, number or 1, body, path, features, add_ons)
            if resolved is not None and number is not None:
                versions[number] = resolved
        found[name] = versions
    return found


def _subscriptions(
    reader: _Reader,
    value: Any,
    plans: Mapping[str, Mapping[int, PublishedPlan]],
    features: Mapping[str, FeatureDefinition],
    meters: Mapping[str, MeterDefinition],
) -> dict[str, Subscription]:
    found: dict[str, Subscription] = {}
    entries = reader.mapping(value, "subscriptions", required=False) or {}
    for customer, spec in entries.items():
        path = f"subscriptions.{customer}"
        before = len(reader.errors)
        body = reader.mapping(spec, path)
        if body is None or reader.name(customer, path) is None:
            continue
        reader.keys(body, path, _SUBSCRIPTION_FIELDS)
        plan = body.get("plan")
        if not isinstance(plan, str) or plan not in plans:
            known = ", ".join(sorted(plans)) or "none defined"
            reader.fail(f"{path}.plan", f"expected a plan of this catalog ({known}), got {_shown(plan)}")
            continue
        versions = plans[plan]
        if not versions:
            continue  # the plan's own errors are reported already
        number = body.get("version", max(versions))
        if number not in versions:
            known = ", ".join(str(v) for v in sorted(versions))
            reader.fail(
                f"{path}.version", f"expected a version of plan {plan} ({known}), got {_shown(number)}"
            )
            continue
        published = versions[number]
        version = published.terms
        anchor = reader.moment(body.get("anchor"), f"{path}.anchor")
        reset = reader.choice(
            body.get("reset_period"), f"{path}.reset_period", ResetPeriod, version.reset_period
        )
        subscription_id = body.get("id", f"{customer}:{plan}")
        if reader.name(subscription_id, f"{path}.id") is None:
            continue
        currency, base_fee = version.currency, version.base_fee
        resolved = dict(version.features)
        overrides = reader.mapping(body.get("overrides"), f"{path}.overrides", required=False) or {}
        reader.keys(overrides, f"{path}.overrides", _OVERRIDE_FIELDS)
        if "base_fee" in overrides:
            base_fee = reader.price(overrides["base_fee"], f"{path}.overrides.base_fee") or Decimal(0)
        if "currency" in overrides:
            currency = _currency(reader, overrides["currency"], f"{path}.overrides.currency") or currency
        add_on_fees: dict[str, Decimal] = {}
        fee_overrides = reader.mapping(
            overrides.get("add_on_fees"), f"{path}.overrides.add_on_fees", required=False
        )
        for key, fee in (fee_overrides or {}).items():
            checked_fee = reader.price(fee, f"{path}.overrides.add_on_fees.{key}")
            if checked_fee is not None:
                add_on_fees[key] = checked_fee
        quantities: dict[str, int] = {}
        for key, quantity in (
            reader.mapping(body.get("add_ons"), f"{path}.add_ons", required=False) or {}
        ).items():
            checked_quantity = reader.integer(quantity, f"{path}.add_ons.{key}", low=0, high=1_000_000_000)
            if checked_quantity:
                quantities[key] = checked_quantity
        values: dict[str, Decimal | str] = {}
        for key, raw_value in (
            reader.mapping(body.get("variables"), f"{path}.variables", required=False) or {}
        ).items():
            given = _variable_value(raw_value)
            if given is None:
                reader.fail(
                    f"{path}.variables.{key}",
                    f'expected a value such as 50000000, "2.5" or a config value, got {_shown(raw_value)}',
                )
            else:
                values[key] = given
        feature_overrides = reader.mapping(
            overrides.get("features"), f"{path}.overrides.features", required=False
        )
        for name, override in (feature_overrides or {}).items():
            entitlement = _entitlement(
                reader, name, override, f"{path}.overrides.features.{name}", features, base=resolved.get(name)
            )
            if entitlement is not None:
                resolved[name] = entitlement
        if anchor is None or reset is None:
            continue
        subscription = Subscription(
            customer_id=customer,
            subscription_id=subscription_id,
            plan=plan,
            version=number,
            anchor=anchor,
            reset_period=reset,
            currency=currency,
            base_fee=base_fee,
            features=tuple(resolved[name] for name in sorted(resolved)),
            add_ons=quantities,
            variables=values,
            add_on_fees=add_on_fees,
        )
        if len(reader.errors) > before:
            continue  # the subscription's own errors are reported already
        try:
            history = _resolved(subscription, published)
        except SubscriptionError as exc:  # add-ons the version allows, its negotiated values, ...
            where = exc.field or "plan"
            reader.fail(f"{path}.{where}", exc.message.removeprefix(f"{where}: "))
            continue
        # negotiated values as the rules read them (a number, or a config value's text)
        found[customer] = replace(subscription, variables=dict(history.latest.variables))
    return found


def _variable_value(value: Any) -> Decimal | str | None:
    """A negotiated value as written: a number (read through its literal) or a config value."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float | Decimal):
        return _number(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None
