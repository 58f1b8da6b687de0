"""`metergate demo`: the whole pipeline on the embedded stack, checked against an independent count.

Order: start the stack (broker + PostgreSQL), apply the demo catalog, grant nimbus-ai its credits,
start metering, rating and the entitlement sidecar as child processes, stream the usage
mix, wait until every service caught up, print the report, stop everything (unless kept running).
The report compares what metergate counted with an independent count of the distinct events and
exits non-zero when they differ.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from metergate.domain.records import (
    Aggregation,
    DeadLetter,
    DuplicateReceipt,
    MeterDefinition,
    UsageAggregate,
    UsageEvent,
    now_utc,
)
from metergate.embedded.services import ServiceProcess, metric_sum, wait_for
from metergate.embedded.stack import EmbeddedStack, StackInfo
from metergate.kafka.follow import read_topic
from metergate.settings import DatabaseSettings, KafkaSettings

CATALOG = Path(__file__).resolve().parent / "catalog.yaml"
SERVICES: tuple[str, ...] = ("metering", "rating", "entitlements")


def expected_value(meter: MeterDefinition, events: list[UsageEvent]) -> Decimal:
    """An independent fold of the distinct events of one (customer, meter, period)."""
    if meter.aggregation is Aggregation.SUM:
        return sum((e.quantity for e in events), Decimal(0))
    if meter.aggregation is Aggregation.COUNT:
        return Decimal(len(events))
    if meter.aggregation is Aggregation.MAX:
        return max(e.quantity for e in events)
    if meter.aggregation is Aggregation.LATEST:
        return max(events, key=lambda e: (e.timestamp, e.event_id)).quantity
    return Decimal(len({e.properties.get(meter.unique_property or "") for e in events}))


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class DemoResult:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


class Demo:
    def __init__(self, data_dir: Path, *, out: TextIO = sys.stdout, progress: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.out = out
        self.progress = progress
        self.stack: EmbeddedStack | None = None
        self.info: StackInfo | None = None
        self.services: dict[str, ServiceProcess] = {}
        self.entitlements_port = 0
        self.entitlements_key = ""  # an API key of the demo's own, never logged
        self.kafka = KafkaSettings()
        self.database = DatabaseSettings()

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True)
        self.say(f"starting the embedded stack in {self.data_dir} ...")
        self.stack = EmbeddedStack(self.data_dir, kafka=self.kafka, database=self.database)
        self.info = self.stack.start()
        self.kafka = self.kafka.model_copy(update={"bootstrap": self.info.kafka_bootstrap})
        self.say(
            f"  broker {self.info.kafka_bootstrap}, PostgreSQL {self.info.database_url} ({self.info.startup_s:.1f} s)"
        )

    def environment(self) -> dict[str, str]:
        assert self.info is not None
        return {**self.info.environment(), "METERGATE_KAFKA_TOPIC_PREFIX": self.kafka.topic_prefix}

    def start_services(self) -> None:
        logs = self.data_dir / "logs"
        for name in SERVICES:
            extra = {}
            if name == "metering":
                extra["METERGATE_METERING_DATA_DIR"] = str(self.data_dir / "metering")
            if name == "entitlements":
                from metergate.embedded.processes import free_port
                from metergate.entitlements.keys import KeyStore

                keys_file = self.data_dir / "entitlements-keys.json"
                self.entitlements_key = KeyStore(keys_file).create("demo", ["check", "ingest"])[1]
                extra["METERGATE_ENTITLEMENTS_HTTP_PORT"] = str(free_port())
                extra["METERGATE_ENTITLEMENTS_KEYS_FILE"] = str(keys_file)
                extra["METERGATE_ENTITLEMENTS_CHECKPOINT_PATH"] = str(
                    self.data_dir / "entitlements-checkpoint.json"
                )
            service = ServiceProcess(name, self.environment(), logs, **extra)
            service.start()
            self.services[name] = service
            self.say(
                f"  {name:12} pid {service.pid}, metrics http://127.0.0.1:{service.metrics_port}/metrics"
            )
        sidecar_env = self.services["entitlements"].child.env or {}
        self.entitlements_port = int(sidecar_env["METERGATE_ENTITLEMENTS_HTTP_PORT"])

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()
        self.services.clear()
        if self.stack is not None:
            self.stack.stop()
            self.stack = None

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> DemoResult:
        from metergate.cli.catalog import load_catalog, publish_catalog
        from metergate.demo.scenario import NIMBUS_CREDITS, build_scenario

        catalog = load_catalog(CATALOG)
        publish_catalog(catalog, self.kafka.client_config(), prefix=self.kafka.topic_prefix)
        self.say(f"catalog applied: {len(catalog.meters)} meters, {len(catalog.subscriptions)} subscriptions")
        self.grant_credits("nimbus-ai", NIMBUS_CREDITS)
        self.say(f"granted nimbus-ai {NIMBUS_CREDITS} USD of prepaid credits")
        self.say("starting services ...")
        self.start_services()

        now = now_utc()
        scenario = build_scenario(now)
        self.stream(scenario)
        self.wait_caught_up(scenario)
        return self.report(scenario, catalog.meters)

    def grant_credits(self, customer_id: str, amount: Decimal) -> None:
        from metergate.usecases.credits import GrantRequest, grant_credits, ledger

        assert self.info is not None
        request = GrantRequest(
            customer_id=customer_id, amount=amount, currency="USD", priority=1, grant_id=f"demo-{customer_id}"
        )
        with ledger(self.info.database_url, self.info.database_schema) as engine:
            grant_credits(engine, request, now=now_utc())

    def stream(self, scenario: Any) -> None:
        from tqdm import tqdm

        from metergate.kafka.producer import make_producer, send
        from metergate.sdk import UsageProducer

        topics = self.kafka.topics
        total = scenario.records_sent
        with (
            UsageProducer(self.kafka.client_config(), topics.events, source="demo") as usage,
            tqdm(
                total=total, desc="streaming usage", unit="event", disable=not self.progress, file=sys.stderr
            ) as bar,
        ):
            for index, event in enumerate(scenario.events):
                usage.send(event)
                bar.update(1)
                if index % 500 == 499:
                    usage.flush()
                    time.sleep(0.05)  # a stream, not one burst: limit events show up as it goes
            raw = make_producer(self.kafka.client_config())
            bar.update(send(raw, topics.events, ((bad.key, bad.value) for bad in scenario.malformed)))
        self.say(
            f"sent {total} records: {len(scenario.distinct())} distinct events, "
            f"{scenario.duplicates} re-sent duplicates, {len(scenario.malformed)} malformed"
        )

    def wait_caught_up(self, scenario: Any, timeout_s: float = 180.0) -> None:
        self.say("waiting for metering, rating and the entitlement sidecar to catch up ...")
        metering = self.services["metering"]
        wait_for(
            lambda: (
                metric_sum(metering.metrics(), "metergate_events_consumed_total") >= scenario.records_sent
            ),
            timeout_s,
            "metering to consume every record",
        )
        aggregates = self.final_aggregates()
        wait_for(lambda: self.rating_caught_up(aggregates), timeout_s, "rating to price every aggregate")
        wait_for(self.entitlements_ready, 30, "the entitlement sidecar to catch up")
        limits = len(self.limit_events())
        sidecar = self.services["entitlements"]
        wait_for(
            lambda: (
                metric_sum(sidecar.metrics(), 'metergate_entitlements_records_applied_total{kind="limit"}')
                >= limits
            ),
            30,
            "the entitlement sidecar to read every limit event",
        )

    # -- reading results ---------------------------------------------------------------------------
    def final_aggregates(self) -> dict[str, UsageAggregate]:
        from metergate.wire.codec import codec

        latest: dict[str, UsageAggregate] = {}
        for _, value, _, _ in read_topic(
            self.kafka.client_config(), self.kafka.topics.aggregates, idle_s=1.5
        ):
            aggregate = codec(UsageAggregate).decode(value)
            current = latest.get(aggregate.key)
            if current is None or aggregate.version > current.version:
                latest[aggregate.key] = aggregate
        return latest

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        import psycopg

        assert self.info is not None
        url = self.info.database_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, options=f"-csearch_path={self.info.database_schema}") as connection:
            yield connection

    def rating_caught_up(self, aggregates: dict[str, UsageAggregate]) -> bool:
        with self.connection() as connection:
            rows = connection.execute(
                "SELECT aggregate_key, max(aggregate_version) FROM line_items "
                "WHERE aggregate_key IS NOT NULL GROUP BY aggregate_key"
            ).fetchall()
        seen = dict(rows)
        return all(seen.get(key, -1) >= aggregate.version for key, aggregate in aggregates.items())

    def entitlements_ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.entitlements_port}/healthz", timeout=5
            ) as response:
                return bool(json.loads(response.read())["ready"])
        except OSError:  # 503 while catching up, or not listening yet
            return False

    def limit_events(self) -> list[dict[str, Any]]:
        """Every limit event on usage.limits (what enforcement services and the sidecar read)."""
        from metergate.domain.records import LimitEvent
        from metergate.wire.codec import codec

        records = read_topic(self.kafka.client_config(), self.kafka.topics.limits, idle_s=1.0)
        return [json.loads(codec(LimitEvent).decode(value).model_dump_json()) for _, value, _, _ in records]

    def entitlement_check(self, customer: str, feature: str, units: int = 1) -> dict[str, Any]:
        """What an application asking before serving is told (POST /v1/entitlements/check)."""
        body = json.dumps({"customer_id": customer, "feature": feature, "requested_units": units}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.entitlements_port}/v1/entitlements/check",
            data=body,
            headers={"Content-Type": "application/json", "X-API-Key": self.entitlements_key},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    # -- the report --------------------------------------------------------------------------------
    def report(self, scenario: Any, meters: Mapping[str, MeterDefinition]) -> DemoResult:
        from metergate.wire.codec import codec

        result = DemoResult()
        aggregates = self.final_aggregates()
        # the independent count: each distinct event goes to the aggregate whose period holds its time
        periods: dict[tuple[str, str], list[UsageAggregate]] = defaultdict(list)
        for aggregate in aggregates.values():
            periods[(aggregate.customer_id, aggregate.meter)].append(aggregate)
        by_aggregate: dict[str, list[UsageEvent]] = defaultdict(list)
        unplaced = []
        for event in scenario.distinct().values():
            home = next(
                (
                    a
                    for a in periods.get((event.customer_id, event.meter), [])
                    if a.period_start <= event.timestamp < a.period_end
                ),
                None,
            )
            if home is None:
                unplaced.append(event.event_id)
            else:
                by_aggregate[home.key].append(event)

        self.say()
        self.say("=" * 100)
        self.say("metergate demo report")
        self.say("=" * 100)
        self.say(
            "\nUsage per customer, meter and period (counted by metering vs an independent count of the distinct events)"
        )
        self.say(
            f"  {'customer':14} {'meter':13} {'period':11} {'aggregation':12} {'counted':>12} {'expected':>12} {'events':>7}"
        )
        mismatches = len(unplaced)
        for aggregate in sorted(aggregates.values(), key=lambda a: (a.customer_id, a.meter, a.period_start)):
            events = by_aggregate.get(aggregate.key, [])
            expected = expected_value(meters[aggregate.meter], events) if events else None
            ok = aggregate.value == expected and aggregate.event_count == len(events)
            mismatches += not ok
            shown = "-" if expected is None else f"{expected.normalize():f}"
            flag = " late" if aggregate.late else ""
            self.say(
                f"  {aggregate.customer_id:14} {aggregate.meter:13} {aggregate.period_start:%Y-%m-%d}  "
                f"{aggregate.aggregation.value:12} {aggregate.value.normalize():>12f} {shown:>12} {len(events):>7} "
                f"{'ok' if ok else 'MISMATCH'}{flag}"
            )
        if unplaced:
            self.say(f"  events counted nowhere: {unplaced[:10]}")
        result.checks.append(
            Check("usage equals the independent count", mismatches == 0, f"{mismatches} mismatches")
        )
        late = [a for a in aggregates.values() if a.late]
        result.checks.append(
            Check(
                "the late event is counted in its own period, flagged late",
                [a.last_event_id for a in late] == scenario.late_event_ids,
                f"late aggregates: {[a.key for a in late]}",
            )
        )

        limit_events = self.limit_events()
        self.say("\nLimit events on usage.limits (read by the entitlement sidecar)")
        kinds: Counter[str] = Counter()
        for event in sorted(limit_events, key=lambda e: (e["customer_id"], e["feature"], e["occurred_at"])):
            kinds[event["kind"]] += 1
            threshold = f" {event['threshold']}%" if event["threshold"] is not None else ""
            limit = f"{Decimal(event['limit']).normalize():f}" if event["limit"] is not None else "no limit"
            self.say(
                f"  {event['customer_id']:14} {event['feature']:10} {event['kind'] + threshold:24} "
                f"usage {Decimal(event['usage']).normalize():f} of {limit}"
            )
        ids = [e["limit_event_id"] for e in limit_events]
        result.checks.append(Check("each limit event once", len(ids) == len(set(ids)), f"{len(ids)} events"))
        expected_kinds = {
            "threshold_crossed",
            "limit_reached",
            "hard_limit_exceeded",
            "overage_started",
            "credits_depleted",
        }
        result.checks.append(
            Check("every kind of limit event seen", expected_kinds <= set(kinds), f"seen: {dict(kinds)}")
        )

        self.say("\nEntitlement checks: what an application asking before serving is told")
        blocked = []
        for customer, feature in (
            ("hobby-hank", "api_calls"),
            ("hobby-hank", "sso"),
            ("pixel-studio", "api_calls"),
            ("pixel-studio", "sso"),
            ("acme-corp", "audit_log"),
            ("walk-in", "api_calls"),
        ):
            decision = self.entitlement_check(customer, feature)
            verdict = "ALLOW" if decision["has_access"] else "DENY "
            usage = (
                f" usage {decision['usage']} of {decision['limit'] or 'unlimited'}"
                if decision["usage"] is not None
                else ""
            )
            self.say(
                f"  {verdict} {customer:14} {feature:10} {decision['reason']}{usage}: {decision['message']}"
            )
            if decision["kind"] == "metered" and not decision["has_access"]:
                blocked.append((customer, feature))
        self.say(f"  blocked now: {', '.join(f'{c}/{f}' for c, f in blocked) or '-'}")
        result.checks.append(
            Check(
                "hobby-hank blocked at its hard limit",
                blocked == [("hobby-hank", "api_calls")],
                f"blocked: {blocked}",
            )
        )

        with self.connection() as connection:
            lines = connection.execute(
                "SELECT customer_id, charge, coalesce(meter, feature), quantity, billable_quantity, amount,"
                " credits_applied, amount_due, currency, status FROM finance_line_items"
                " WHERE status <> 'superseded' ORDER BY customer_id, charge, 3"
            ).fetchall()
            balances = connection.execute(
                "SELECT customer_id, currency, granted, debited, balance, entry_count FROM finance_ledger_balances"
                " ORDER BY customer_id"
            ).fetchall()
            ledger_sum = connection.execute(
                "SELECT customer_id, sum(amount) FROM credit_ledger GROUP BY customer_id"
            ).fetchall()
        self.say("\nLine items (finance_line_items)")
        self.say(
            f"  {'customer':14} {'charge':9} {'meter/feature':14} {'quantity':>12} {'billable':>12} {'amount':>9}"
            f" {'credits':>8} {'due':>9}"
        )
        for customer, charge, what, quantity, billable, amount, credits, due, currency, status in lines:
            self.say(
                f"  {customer:14} {charge:9} {what:14} {quantity.normalize():>12f} {billable.normalize():>12f}"
                f" {amount:>9} {credits:>8} {due:>9} {currency} {status if status != 'rated' else ''}"
            )
        self.say("\nCredit ledger balances (finance_ledger_balances)")
        for customer, currency, granted, debited, balance, entries in balances:
            self.say(
                f"  {customer:14} granted {granted} debited {debited} balance {balance} {currency} ({entries} entries)"
            )
        sums = dict(ledger_sum)
        balanced = all(sums.get(customer) == balance for customer, _, _, _, balance, _ in balances)
        result.checks.append(Check("balance equals the sum of ledger entries", balanced, str(sums)))
        nimbus = next((b for b in balances if b[0] == "nimbus-ai"), None)
        result.checks.append(
            Check("nimbus-ai drained its credits", nimbus is not None and nimbus[4] == 0, f"{nimbus}")
        )

        config = self.kafka.client_config()
        dlq = [
            codec(DeadLetter).decode(v)
            for _, v, _, _ in read_topic(config, self.kafka.topics.dlq, idle_s=1.0)
        ]
        receipts = [
            codec(DuplicateReceipt).decode(v)
            for _, v, _, _ in read_topic(config, self.kafka.topics.duplicates, idle_s=1.0)
        ]
        self.say("\nRejected (usage.dlq) and duplicates (usage.duplicates)")
        for letter in dlq:
            self.say(f"  DLQ from {letter.service:9} {letter.reason:22} {letter.message}")
        self.say(f"  duplicate receipts: {len(receipts)} (re-sent on purpose: {scenario.duplicates})")
        got_reasons = sorted(letter.reason for letter in dlq if letter.service == "metering")
        want_reasons = sorted(bad.expected_reason for bad in scenario.malformed)
        result.checks.append(
            Check(
                "every malformed record in the DLQ with its reason",
                got_reasons == want_reasons,
                str(got_reasons),
            )
        )
        result.checks.append(
            Check(
                "one receipt per duplicate", len(receipts) == scenario.duplicates, f"{len(receipts)} receipts"
            )
        )

        self.say("\nChecks")
        for check in result.checks:
            self.say(
                f"  [{'ok' if check.ok else 'FAILED'}] {check.name}"
                + ("" if check.ok else f": {check.detail}")
            )
        return result


def run_demo(data_dir: Path, *, keep_running: bool, progress: bool, out: TextIO = sys.stdout) -> int:
    demo = Demo(data_dir, out=out, progress=progress)
    stop = threading.Event()
    previous: dict[signal.Signals, Callable[..., Any] | int | None] = {}

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)
    started = time.monotonic()
    try:
        demo.start()
        result = demo.run()
        demo.say(
            f"\ndemo finished in {time.monotonic() - started:.0f} s: {'all checks passed' if result.ok else 'SOME CHECKS FAILED'}"
        )
        if keep_running:
            demo.say("\nThe stack keeps running. Connect with:")
            for name, value in demo.environment().items():
                demo.say(f"  export {name}={value}")
            demo.say(
                f"  entitlements: curl -H 'X-API-Key: {demo.entitlements_key}' http://127.0.0.1:{demo.entitlements_port}/v1/entitlements/check"
                ' -d \'{"customer_id": "hobby-hank", "feature": "api_calls"}\''
            )
            demo.say("Ctrl-C stops everything.")
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
        return 0 if result.ok else 1
    except KeyboardInterrupt:
        demo.say("interrupted")
        return 130
    except Exception:
        for service in demo.services.values():
            demo.say(f"--- last lines of {service.name}'s log ---\n{service.tail()}")
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        demo.say("stopping services and the stack ...")
        demo.stop()
        demo.say("stopped: no process left behind")
