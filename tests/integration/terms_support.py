"""Helpers of the journeys where a customer's terms change during a period: the README's Growth and
Scale plans provisioned in PostgreSQL and relayed to entitlements.snapshots under an injected clock,
a metering worker whose wall clock is that clock (tests/fake_date), rating in a thread of this
process, and the usage lines it wrote."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from metergate import provisioning
from metergate.db import subscription_store as store
from metergate.domain.catalog import PlanVersion
from metergate.domain.records import (
    EntitlementSnapshot,
    FeatureEntitlement,
    FeatureKind,
    Pricing,
    PricingModel,
    ResetPeriod,
)
from metergate.domain.subscriptions import PriceOverrides, PublishedPlan
from metergate.kafka.producer import make_producer
from metergate.kafka.topics import Topics
from metergate.snapshot_relay import relay_once
from metergate_services.rating.consumer import RatingConsumer
from metergate_services.rating.settings import RatingSettings
from tests.integration.metering_support import ROOT, Worker, publish
from tests.integration.rating_support import query

CUSTOMER = "acme"
METERS = {"meters": {"api_calls": {"aggregation": "SUM"}}}


def at(day: int, month: int = 11, hour: int = 0, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def offer(key: str, fee: str, included: int, unit_price: str, version: int = 1) -> PublishedPlan:
    """A plan of one metered feature, api_calls: `included` calls a month, `unit_price` per extra call."""
    calls = FeatureEntitlement(
        feature="api_calls",
        kind=FeatureKind.METERED,
        meter="api_calls",
        included=Decimal(included),
        pricing=Pricing(model=PricingModel.PER_UNIT, unit_price=Decimal(unit_price)),
    )
    return PublishedPlan(
        PlanVersion(key, version, "USD", Decimal(fee), ResetPeriod.MONTHLY, {"api_calls": calls})
    )


#: the domain README's worked example: $0.20 and $0.15 per extra 1,000 calls
GROWTH = offer("growth", "1000.00", 10_000_000, "0.0002")
SCALE = offer("scale", "2000.00", 50_000_000, "0.00015")


class Catalog:
    """The catalog in PostgreSQL and the relay that publishes it, both on the injected clock."""

    def __init__(self, engine: Engine, kafka_config: Mapping[str, Any], topics: Topics) -> None:
        self.engine, self.topics = engine, topics
        self.producer = make_producer(dict(kafka_config))
        publish(METERS, kafka_config, topics)

    def plans(self, *plans: PublishedPlan, now: datetime) -> None:
        with self.engine.begin() as conn:
            for plan in plans:
                store.publish_plan_version(conn, plan, who="test", now=now)

    def subscribe(self, plan: str, start: datetime) -> None:
        provisioning.create_customer(self.engine, CUSTOMER, name=None, who="test", now=start)
        provisioning.create_subscription(
            self.engine,
            subscription_id=CUSTOMER,
            customer_id=CUSTOMER,
            plan=plan,
            version=None,
            start=start,
            anchor=None,
            reset_period=None,
            add_ons={},
            variables={},
            overrides=PriceOverrides(),
            who="test",
            now=start,
        )

    def change(self, plan: str, version: int | None, *, at: datetime, now: datetime) -> None:
        provisioning.change_subscription(
            self.engine, CUSTOMER, provisioning.Change(plan=plan, version=version), at=at, who="test", now=now
        )

    def relay(self, moment: datetime) -> list[tuple[str | None, datetime | None, datetime | None]]:
        sent: list[EntitlementSnapshot] = relay_once(
            self.engine, self.producer, self.topics, clock=lambda: moment
        )
        return [(s.plan_key, s.valid_from, s.valid_to) for s in sent]

    def close(self) -> None:
        self.producer.flush(10)


def clocked_worker(kafka_bootstrap: str, topics: Topics, data_dir: Path, now: datetime) -> Worker:
    """A metering worker whose wall clock reads `now` (ticking): events of that month are current."""
    worker = Worker(kafka_bootstrap, topics, data_dir)
    worker.env.pop("FAKE_OFFSET_S", None)  # a suite run on another date: this worker has its own
    worker.env["FAKE_NOW"] = now.isoformat()
    path = os.environ.get("PYTHONPATH")
    worker.env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "fake_date"), *([path] if path else [])])
    return worker


@contextmanager
def rating_thread(settings: RatingSettings) -> Iterator[RatingConsumer]:
    consumer = RatingConsumer(settings)
    thread = threading.Thread(target=consumer.run, name="rating", daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        consumer.stop()
        thread.join(60)
        assert not thread.is_alive(), "rating did not stop"


USAGE_COLUMNS = (
    "line_key, plan_key, plan_version, quantity, included_quantity, billable_quantity, unit_price, amount,"
    " status, event_count, detail, aggregate_version"
)


def usage_lines(database_url: str, schema: str, columns: str = USAGE_COLUMNS) -> list[tuple[Any, ...]]:
    """The usage line items rating wrote, by key (base-fee lines are not looked at here)."""
    return query(
        database_url, schema, f"SELECT {columns} FROM line_items WHERE charge = 'usage' ORDER BY line_key"
    )


def rated_version(database_url: str, schema: str, aggregate_key: str) -> int | None:
    rows = query(
        database_url,
        schema,
        "SELECT max(aggregate_version) FROM line_items WHERE aggregate_key = :k",
        k=aggregate_key,
    )
    return rows[0][0]
