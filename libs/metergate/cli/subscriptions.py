"""`metergate customers` and `metergate subscriptions`: provisioning in PostgreSQL.

A thin shell over `metergate.provisioning`: it parses options, reads the clock once, names the
CLI user as the audit's `who` (`cli:<login>`), and prints. Bad input is one line naming the field,
exit code 2.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import click
from sqlalchemy import Engine

from metergate.cli.reporting import BadSetup
from metergate.domain.records import Pricing, PricingModel, ResetPeriod
from metergate.domain.subscriptions import History, PriceOverrides, When
from metergate.errors import InvalidInput


def who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name in the environment or the password database
        return "cli:unknown"


@contextmanager
def _engine() -> Iterator[Engine]:
    from metergate.db.engine import make_engine
    from metergate.settings import DatabaseSettings

    settings = DatabaseSettings()
    engine = make_engine(settings.sqlalchemy_url(), settings.schema_name)
    try:
        yield engine
    except InvalidInput as exc:
        raise BadSetup(str(exc).splitlines()[0]) from None
    finally:
        engine.dispose()


def _now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------
# option parsing: each error names the option and shows what would be right


def _moment(value: str, option: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadSetup(
            f"{option}: expected an ISO 8601 moment with an offset such as 2026-12-01T00:00:00Z, got {value!r}"
        ) from None
    if parsed.tzinfo is None:
        raise BadSetup(f"{option}: expected an offset (Z or +01:00) in {value!r}")
    return parsed.astimezone(UTC)


def _at(value: str) -> When | datetime:
    if value in (When.IMMEDIATELY.value, When.PERIOD_END.value):
        return When(value)
    try:
        return _moment(value, "--at")
    except BadSetup:
        raise BadSetup(
            f"--at: expected immediately, period_end or an ISO 8601 moment such as 2026-12-01T00:00:00Z, got {value!r}"
        ) from None


def _decimal(value: str, option: str, example: str) -> Decimal:
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        raise BadSetup(f"{option}: expected a number such as {example}, got {value!r}") from None
    if not number.is_finite() or number < 0:
        raise BadSetup(f"{option}: expected a number >= 0 such as {example}, got {value!r}")
    return Decimal(format(number, "f"))


def _pairs(values: Sequence[str], option: str, example: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key.strip() or not item.strip():
            raise BadSetup(f"{option}: expected KEY=VALUE such as {example}, got {value!r}")
        pairs.append((key.strip(), item.strip()))
    return pairs


def _add_ons(values: Sequence[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for key, item in _pairs(values, "--add-on", "extra_seats=5"):
        if not item.isdigit():
            raise BadSetup(
                f"--add-on: expected a whole quantity >= 0 for {key}, such as {key}=5, got {item!r}"
            )
        found[key] = int(item)
    return found


def _variables(values: Sequence[str]) -> dict[str, Decimal | str]:
    found: dict[str, Decimal | str] = {}
    for key, item in _pairs(values, "--set", "api_calls.limit=50000000"):
        found[key] = item  # the rules read quantities and config values from text and name the path
    return found


def _overrides(
    base_fee: str | None, prices: Sequence[str], add_on_fees: Sequence[str]
) -> tuple[Decimal | None, dict[str, Pricing], dict[str, Decimal]]:
    fee = None if base_fee is None else _decimal(base_fee, "--base-fee", "900.00")
    pricing = {
        key: Pricing(model=PricingModel.PER_UNIT, unit_price=_decimal(item, "--price", "api_calls=0.0002"))
        for key, item in _pairs(prices, "--price", "api_calls=0.0002")
    }
    fees = {
        key: _decimal(item, "--add-on-fee", "extra_seats=8.00")
        for key, item in _pairs(add_on_fees, "--add-on-fee", "extra_seats=8.00")
    }
    return fee, pricing, fees


# ---------------------------------------------------------------------------------------------
# printing


def _describe(history: History) -> list[str]:
    first = history.versions[0]
    ends = f", ends {history.end.isoformat()}" if history.end else ""
    lines = [
        f"subscription {first.subscription_id} of {first.customer_id} "
        f"(anchor {first.anchor.isoformat()}, {first.reset_period.value}{ends})"
    ]
    for version in history.versions:
        until = version.effective_to.isoformat() if version.effective_to else "open"
        parts = [
            f"  #{version.number} {version.plan.label}",
            f"{version.effective_from.isoformat()} .. {until}",
            version.change,
        ]
        if version.add_ons:
            parts.append("add-ons " + " ".join(f"{k}={q}" for k, q in sorted(version.add_ons.items())))
        if version.variables:
            parts.append("values " + " ".join(f"{k}={v}" for k, v in sorted(version.variables.items())))
        overrides = version.overrides
        shown = []
        if overrides.base_fee is not None:
            shown.append(f"base_fee={overrides.base_fee}")
        shown += [f"{k}={p.model.value}:{p.unit_price}" for k, p in sorted(overrides.pricing.items())]
        shown += [f"{k}.fee={v}" for k, v in sorted(overrides.add_on_fees.items())]
        if shown:
            parts.append("overrides " + " ".join(shown))
        lines.append("  ".join(parts))
    return lines


def _as_json(history: History) -> dict[str, Any]:
    return {
        "subscription_id": history.subscription_id,
        "ends_at": None if history.end is None else history.end.isoformat(),
        "versions": [v.as_dict() for v in history.versions],
    }


_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
_at_option = click.option(
    "--at",
    "at",
    default="immediately",
    show_default=True,
    help="immediately, period_end, or an ISO 8601 moment (not in the past).",
)


# ---------------------------------------------------------------------------------------------
# customers


@click.group("customers")
def customers() -> None:
    """Customers: the accounts subscriptions belong to."""


@customers.command("create")
@click.argument("customer_id")
@click.option("--name", help="Display name.")
def customers_create(customer_id: str, name: str | None) -> None:
    """Record CUSTOMER_ID (running it again with the same name changes nothing)."""
    from metergate import provisioning

    with _engine() as engine:
        created = provisioning.create_customer(engine, customer_id, name=name, who=who(), now=_now())
    click.echo(f"{'created' if created else 'exists already (nothing written)'}: customer {customer_id}")


@customers.command("show")
@click.argument("customer_id")
@_json
def customers_show(customer_id: str, as_json: bool) -> None:
    """A customer and its subscriptions."""
    from metergate import provisioning

    with _engine() as engine:
        customer, histories = provisioning.show_customer(engine, customer_id)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "customer_id": customer.customer_id,
                    "name": customer.name,
                    "created_at": customer.created_at.isoformat(),
                    "created_by": customer.created_by,
                    "subscriptions": [_as_json(h) for h in histories],
                },
                indent=2,
            )
        )
        return
    click.echo(f"customer {customer.customer_id}" + (f" ({customer.name})" if customer.name else ""))
    if not histories:
        click.echo("  no subscription")
    for history in histories:
        for line in _describe(history):
            click.echo(f"  {line}")


@customers.command("audit")
@click.argument("customer_id")
@_json
def customers_audit(customer_id: str, as_json: bool) -> None:
    """Every change of a customer and of its subscriptions: when, who, what, and what it changed
    (--json: before and after as recorded)."""
    from metergate import provisioning

    with _engine() as engine:
        trail = provisioning.customer_audit_trail(engine, customer_id)
    _print_audit(trail, as_json)


# ---------------------------------------------------------------------------------------------
# subscriptions


@click.group("subscriptions")
def subscriptions() -> None:
    """Subscriptions as dated versions: create, change, cancel, show, migrate."""


_add_on_option = click.option(
    "--add-on", "add_ons", multiple=True, help="KEY=QUANTITY of an add-on the plan allows (0 removes it)."
)
_set_option = click.option(
    "--set",
    "values",
    multiple=True,
    help="Negotiated value of a custom plan: PATH=VALUE (api_calls.limit=5e7).",
)
_fee_option = click.option("--base-fee", help="Price override: the base fee per period.")
_price_option = click.option(
    "--price",
    "prices",
    multiple=True,
    help="Price override: FEATURE=UNIT_PRICE (per unit) of a metered feature.",
)
_add_on_fee_option = click.option(
    "--add-on-fee", "add_on_fees", multiple=True, help="Price override: ADD_ON=FEE per unit and period."
)


@subscriptions.command("create")
@click.option(
    "--customer", "customer_id", required=True, help="The customer (see `metergate customers create`)."
)
@click.option("--plan", required=True, help="A published plan.")
@click.option("--version", type=int, help="Plan version (default: the latest published).")
@click.option("--id", "subscription_id", help="Subscription id (default: the customer id). It never changes.")
@click.option("--start", help="When it takes effect (ISO 8601; default now; not in the past).")
@click.option("--anchor", help="Billing anchor (ISO 8601; default: the start).")
@click.option(
    "--reset-period", type=click.Choice([p.value for p in ResetPeriod]), help="Default: the plan version's."
)
@_add_on_option
@_set_option
@_fee_option
@_price_option
@_add_on_fee_option
@_json
def subscriptions_create(
    customer_id: str,
    plan: str,
    version: int | None,
    subscription_id: str | None,
    start: str | None,
    anchor: str | None,
    reset_period: str | None,
    add_ons: tuple[str, ...],
    values: tuple[str, ...],
    base_fee: str | None,
    prices: tuple[str, ...],
    add_on_fees: tuple[str, ...],
    as_json: bool,
) -> None:
    """Subscribe a customer to a plan version."""
    from metergate import provisioning

    fee, pricing, fees = _overrides(base_fee, prices, add_on_fees)
    with _engine() as engine:
        changed = provisioning.create_subscription(
            engine,
            subscription_id=subscription_id or customer_id,
            customer_id=customer_id,
            plan=plan,
            version=version,
            start=None if start is None else _moment(start, "--start"),
            anchor=None if anchor is None else _moment(anchor, "--anchor"),
            reset_period=None if reset_period is None else ResetPeriod(reset_period),
            add_ons=_add_ons(add_ons),
            variables=_variables(values),
            overrides=PriceOverrides(base_fee=fee, pricing=pricing, add_on_fees=fees),
            who=who(),
            now=_now(),
        )
    _print(changed.history, as_json)


def _print(history: History, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_as_json(history), indent=2))
    else:
        for line in _describe(history):
            click.echo(line)


@subscriptions.command("change")
@click.argument("subscription_id")
@click.option("--plan", help="Another plan (upgrade, downgrade).")
@click.option("--version", type=int, help="Another version (default with --plan: the latest).")
@_add_on_option
@_set_option
@_fee_option
@_price_option
@_add_on_fee_option
@click.option("--clear-overrides", is_flag=True, help="Drop the subscription's price overrides first.")
@click.option(
    "--dry-run", is_flag=True, help="Print the versions and the period's fees it would make; write nothing."
)
@_at_option
@_json
def subscriptions_change(
    subscription_id: str,
    plan: str | None,
    version: int | None,
    add_ons: tuple[str, ...],
    values: tuple[str, ...],
    base_fee: str | None,
    prices: tuple[str, ...],
    add_on_fees: tuple[str, ...],
    clear_overrides: bool,
    dry_run: bool,
    at: str,
    as_json: bool,
) -> None:
    """Change a subscription: a new dated version from --at on."""
    from metergate import provisioning

    fee, pricing, fees = _overrides(base_fee, prices, add_on_fees)
    overrides = None
    if fee is not None or pricing or fees or clear_overrides:
        overrides = provisioning.OverrideUpdate(
            base_fee=fee, pricing=pricing, add_on_fees=fees, clear=clear_overrides
        )
    change = provisioning.Change(
        plan=plan,
        version=version,
        add_ons=_add_ons(add_ons) or None,
        variables=_variables(values) or None,
        overrides=overrides,
    )
    when = _at(at)
    with _engine() as engine:
        if dry_run:
            history, before, after = provisioning.preview_change(
                engine, subscription_id, change, at=when, now=_now()
            )
            _print(history, as_json)
            if not as_json:
                click.echo(
                    f"fees of the period {after.period.start.isoformat()} .. {after.period.end.isoformat()}: "
                    f"{before.total} {before.currency} as it is, {after.total} {after.currency} with the change"
                )
                for line in after.lines:
                    charge = line.charge
                    click.echo(
                        f"  {line.plan} v{line.plan_version}  {charge.feature}  {charge.amount} {charge.currency}  "
                        f"{charge.detail}"
                    )
                click.echo("nothing written (--dry-run)")
            return
        changed = provisioning.change_subscription(
            engine, subscription_id, change, at=when, who=who(), now=_now()
        )
    _print(changed.history, as_json)


@subscriptions.command("cancel")
@click.argument("subscription_id")
@_at_option
@_json
def subscriptions_cancel(subscription_id: str, at: str, as_json: bool) -> None:
    """Cancel: nothing is in force from --at on (no access, no fee)."""
    from metergate import provisioning

    when = _at(at)
    with _engine() as engine:
        changed = provisioning.cancel_subscription(engine, subscription_id, at=when, who=who(), now=_now())
    _print(changed.history, as_json)


@subscriptions.command("unschedule")
@click.argument("subscription_id")
@_json
def subscriptions_unschedule(subscription_id: str, as_json: bool) -> None:
    """Drop the change or cancellation scheduled for later (the terms in force stay, open-ended)."""
    from metergate import provisioning

    with _engine() as engine:
        changed = provisioning.unschedule_subscription(engine, subscription_id, who=who(), now=_now())
    _print(changed.history, as_json)


@subscriptions.command("fees")
@click.argument("subscription_id")
@click.option("--period-of", "moment", help="A moment in the period (ISO 8601; default now).")
def subscriptions_fees(subscription_id: str, moment: str | None) -> None:
    """The period's base and add-on fees, prorated by time in force (with or without usage)."""
    from metergate import provisioning

    when = _now() if moment is None else _moment(moment, "--period-of")
    with _engine() as engine:
        bill = provisioning.preview_fees(engine, subscription_id, when)
    click.echo(f"period {bill.period.start.isoformat()} .. {bill.period.end.isoformat()}")
    for line in bill.lines:
        charge = line.charge
        click.echo(
            f"  {line.plan} v{line.plan_version}  {charge.feature}  {charge.amount} {charge.currency}  {charge.detail}"
        )
    click.echo(f"total {bill.total} {bill.currency}" if bill.lines else "nothing in force in this period")


@subscriptions.command("audit")
@click.argument("subscription_id")
@_json
def subscriptions_audit(subscription_id: str, as_json: bool) -> None:
    """Every change of a subscription: when, who, what, and what it changed (--json: the versions
    before and after)."""
    from metergate import provisioning

    with _engine() as engine:
        trail = provisioning.audit_trail(engine, subscription_id)
    _print_audit(trail, as_json)


def _print_audit(trail: Sequence[Any], as_json: bool) -> None:
    if as_json:
        rows = [
            {
                "at": entry.at.isoformat(),
                "who": entry.who,
                "action": entry.action,
                "entity": entry.entity,
                "entity_id": entry.entity_id,
                "before": entry.before,
                "after": entry.after,
                "changes": entry.changes,
            }
            for entry in trail
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    for entry in trail:
        click.echo(f"{entry.at.isoformat()}  {entry.who}  {entry.action} {entry.entity} {entry.entity_id}")
        for change in entry.changes:
            click.echo(f"    {change}")


@subscriptions.command("show")
@click.argument("subscription_id")
@_json
def subscriptions_show(subscription_id: str, as_json: bool) -> None:
    """A subscription's versions, each with its validity."""
    from metergate import provisioning

    with _engine() as engine:
        history = provisioning.show_subscription(engine, subscription_id)
    _print(history, as_json)


@subscriptions.command("migrate")
@click.option("--plan", required=True, help="The plan whose subscribers move.")
@click.option("--from", "from_version", type=int, required=True, help="The version they are on.")
@click.option("--to", "to_version", type=int, required=True, help="The version they move to.")
@click.option(
    "--at",
    "at",
    default="period_end",
    show_default=True,
    help="immediately, period_end, or an ISO 8601 moment.",
)
def subscriptions_migrate(plan: str, from_version: int, to_version: int, at: str) -> None:
    """Move every subscription on PLAN v FROM to v TO (all or none; grandfathered until then)."""
    from metergate import provisioning

    when = _at(at)
    with _engine() as engine:
        moved = provisioning.migrate(
            engine,
            plan=plan,
            from_version=from_version,
            to_version=to_version,
            at=when,
            who=who(),
            now=_now(),
        )
    for changed in moved:
        latest = changed.history.latest
        click.echo(
            f"{changed.history.subscription_id}: {plan} v{to_version} from {latest.effective_from.isoformat()}"
        )
    click.echo(
        f"{len(moved)} subscription{'' if len(moved) == 1 else 's'} migrated from {plan} v{from_version}"
    )


@subscriptions.command("publish")
@click.option("--follow", is_flag=True, help="Keep relaying (Ctrl-C stops); without it, one round.")
@click.option("--interval-s", default=0.1, show_default=True, type=float, help="Pause between idle rounds.")
def subscriptions_publish(follow: bool, interval_s: float) -> None:
    """Relay the catalog outbox to entitlements.snapshots: terms that are due (in force now, or a
    scheduled change or cancellation whose moment has come)."""
    import signal
    import threading

    from metergate.kafka.producer import make_producer
    from metergate.kafka.topics import Topics
    from metergate.settings import KafkaSettings
    from metergate.snapshot_relay import relay_once, run_relay

    if interval_s <= 0:
        raise BadSetup(f"--interval-s: expected a positive number of seconds such as 0.1, got {interval_s}")
    kafka = KafkaSettings()
    topics = Topics(kafka.topic_prefix)
    with _engine() as engine:
        if not follow:
            producer = make_producer(kafka.client_config())
            sent = relay_once(engine, producer, topics, clock=_now)
            click.echo(f"published {len(sent)} snapshot{'' if len(sent) == 1 else 's'}")
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        total = 0

        def count(sent: list[Any]) -> None:
            nonlocal total
            total += len(sent)

        try:
            run_relay(
                engine,
                kafka.client_config(),
                topics,
                clock=_now,
                stop=stop,
                interval_s=interval_s,
                on_round=count,
            )
        except KeyboardInterrupt:
            stop.set()
        click.echo(f"published {total} snapshot{'' if total == 1 else 's'}")
