"""Helpers of the fee-line journeys: plans provisioned in PostgreSQL, relayed to the snapshots topic
by the snapshot relay, billed by a running rating consumer; its fee lines and invoice rows out."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D
from typing import Any

from sqlalchemy import Engine

from metergate.db import subscription_store as store
from metergate.domain.catalog import PlanVersion
from metergate.domain.records import FeatureEntitlement, FeatureKind, Pricing, PricingModel, ResetPeriod
from metergate.domain.subscriptions import AddOn, PublishedPlan
from metergate.kafka.producer import make_producer
from metergate.kafka.topics import Topics
from metergate.snapshot_relay import relay_once
from tests.integration.rating_support import query


def at(day: int, month: int = 11, hour: int = 0) -> datetime:
    """A moment of the tests' own calendar (November 2026 has 30 days, December 31)."""
    return datetime(2026, month, day, hour, tzinfo=UTC)


def calls(included: int, price: str) -> FeatureEntitlement:
    return FeatureEntitlement(
        feature="api_calls",
        kind=FeatureKind.METERED,
        meter="api_calls",
        included=D(included),
        pricing=Pricing(model=PricingModel.PER_UNIT, unit_price=D(price)),
    )


def offer(key: str, fee: str, included: int, price: str, add_ons: tuple[AddOn, ...] = ()) -> PublishedPlan:
    return PublishedPlan(
        PlanVersion(key, 1, "USD", D(fee), ResetPeriod.MONTHLY, {"api_calls": calls(included, price)}),
        add_ons={add_on.key: add_on for add_on in add_ons},
    )


def publish(engine: Engine, *plans: PublishedPlan, now: datetime) -> None:
    with engine.begin() as conn:
        for plan in plans:
            for add_on in plan.add_ons.values():
                store.publish_add_on(conn, add_on, who="pricing", now=now)
            store.publish_plan_version(conn, plan, who="pricing", now=now)


class Relay:
    """The snapshot relay, run one round at a time with the test's clock."""

    def __init__(self, engine: Engine, kafka_config: dict[str, Any], topics: Topics) -> None:
        self.engine, self.topics = engine, topics
        self.producer = make_producer(kafka_config)

    def __call__(self, moment: datetime) -> int:
        sent = relay_once(self.engine, self.producer, self.topics, clock=lambda: moment)
        self.producer.flush(10)
        return len(sent)

    def close(self) -> None:
        self.producer.flush(10)


def fee_lines(database_url: str, schema: str, *, superseded: bool = False) -> list[tuple[Any, ...]]:
    """(period start, feature, plan, amount, status, detail) of every fee line, in period order."""
    return query(
        database_url,
        schema,
        "SELECT period_start, feature, plan_key, amount, status, detail FROM line_items"
        " WHERE charge = 'base_fee' AND (:superseded OR status <> 'superseded')"
        " ORDER BY period_start, line_key",
        superseded=superseded,
    )


def invoices(database_url: str, schema: str) -> list[tuple[Any, ...]]:
    """(customer, period start, amount total, credits applied, amount due, line count) per invoice row."""
    return query(
        database_url,
        schema,
        "SELECT customer_id, period_start, amount_total, credits_applied, amount_due, line_count"
        " FROM invoice_sync ORDER BY customer_id, period_start",
    )
