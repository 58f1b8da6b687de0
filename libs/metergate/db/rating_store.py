"""PostgreSQL side of the rating consumer: load a batch's state, write what the fold changed.

Every function takes a Connection inside the caller's transaction; nothing here commits. The hot
path writes with one `INSERT ... SELECT FROM unnest(arrays)` per table (one round trip per table
per batch), after the fold collapsed every key to its newest state (ON CONFLICT cannot touch one
row twice in a statement).

Concurrency: a partition is processed by one consumer at a time, and the offsets rows of the
batch's partitions are locked and compared with what this consumer expects (`lock_offsets`), so a
zombie consumer that lost its partitions cannot write. Credit is per customer across partitions:
`load_credit` locks the customers' `credit_accounts` rows (in customer order) for the transaction.
"""

from __future__ import annotations

import io
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.copy import Copy, FileWriter
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.exc import DisconnectionError

from metergate.domain.ledger import (
    BalanceRow,
    Depletion,
    Entry,
    EntryType,
    Grant,
    Wallet,
    grant_expiry_key,
)
from metergate.domain.pricing import ChargeStatus, ChargeType
from metergate.domain.rating import Line
from metergate.errors import MetergateError

ZERO = Decimal(0)


def _arrays(columns: Sequence[tuple[str, str]]) -> str:
    """`unnest(...)` arguments: one binary array parameter per column (psycopg `%(name)b`).

    Binary parameters, and numbers sent as their text (`::text[]::numeric[]`), cost a fraction of
    psycopg's text dumping of datetimes and Decimals, which dominated a batch's write time.
    """
    parts = []
    for name, sqltype in columns:
        if sqltype in ("numeric", "jsonb"):
            parts.append(f"%({name})b::text[]::{sqltype}[]")
        else:
            parts.append(f"%({name})b::{sqltype}[]")
    return ", ".join(parts)


def text_array(values: Iterable[str]) -> str:
    """A text[] literal of `values` (sent as one text parameter, cast `::text[]` in SQL).

    psycopg dumps a list element by element in Python (~0.25 us each); joining is done in C.
    Every element is quoted, so commas, braces, spaces, an empty string or "NULL" stay themselves.
    """
    values = list(values)
    if not values:
        return "{}"
    whole = "".join(values)
    if '"' in whole or "\\" in whole:  # rare: escaped one by one
        values = [value.replace("\\", "\\\\").replace('"', '\\"') for value in values]
    return '{"' + '","'.join(values) + '"}'


def _texts(values: Iterable[Any]) -> list[str | None]:
    return [None if value is None else str(value) for value in values]


class StaleAssignment(MetergateError):
    """The stored offsets are not where this consumer left them: another consumer wrote them."""


class IntegrityFault(MetergateError):
    """The database disagrees with what the fold computed from it: a bug of ours; stop loudly."""


# -- offsets -----------------------------------------------------------------------------------


def stored_offsets(conn: Connection, group: str, topic: str, partitions: Collection[int]) -> dict[int, int]:
    rows = conn.execute(
        text(
            "SELECT partition, next_offset FROM consumer_offsets "
            "WHERE consumer_group = :group AND topic = :topic AND partition = ANY(:partitions)"
        ),
        {"group": group, "topic": topic, "partitions": list(partitions)},
    )
    return {int(p): int(o) for p, o in rows}


def lock_offsets(conn: Connection, group: str, topic: str, expected: Mapping[int, int | None]) -> None:
    """Lock the offsets rows of `expected`'s partitions; raise StaleAssignment unless they hold `expected`."""
    rows = conn.execute(
        text(
            "SELECT partition, next_offset FROM consumer_offsets "
            "WHERE consumer_group = :group AND topic = :topic AND partition = ANY(:partitions) "
            "ORDER BY partition FOR UPDATE"
        ),
        {"group": group, "topic": topic, "partitions": sorted(expected)},
    )
    stored = {int(p): int(o) for p, o in rows}
    for partition, offset in expected.items():
        if stored.get(partition) != offset:
            raise StaleAssignment(
                f"{topic}[{partition}]: stored next offset {stored.get(partition)}, this consumer expected {offset}"
            )


def save_offsets(conn: Connection, group: str, topic: str, next_offsets: Mapping[int, int]) -> None:
    partitions = sorted(next_offsets)
    conn.execute(
        text(
            "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset, updated_at) "
            "SELECT :group, :topic, p, o, now() FROM unnest(CAST(:partitions AS int[]), CAST(:offsets AS bigint[])) AS u(p, o) "
            "ON CONFLICT (consumer_group, topic, partition) DO UPDATE "
            "SET next_offset = EXCLUDED.next_offset, updated_at = EXCLUDED.updated_at"
        ),
        {
            "group": group,
            "topic": topic,
            "partitions": partitions,
            "offsets": [next_offsets[p] for p in partitions],
        },
    )


def reset_offsets(conn: Connection, group: str, topic: str) -> int:
    """Forget the stored offsets: the next assignment replays the topic from the beginning."""
    result = conn.execute(
        text("DELETE FROM consumer_offsets WHERE consumer_group = :group AND topic = :topic"),
        {"group": group, "topic": topic},
    )
    return result.rowcount


# -- line items --------------------------------------------------------------------------------

_LINE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("line_key", "text"),
    ("aggregate_key", "text"),
    ("customer_id", "text"),
    ("subscription_id", "text"),
    ("plan_key", "text"),
    ("plan_version", "int"),
    ("feature", "text"),
    ("meter", "text"),
    ("charge", "text"),
    ("status", "text"),
    ("unpriced_reason", "text"),
    ("period_start", "timestamptz"),
    ("period_end", "timestamptz"),
    ("currency", "text"),
    ("quantity", "numeric"),
    ("included_quantity", "numeric"),
    ("billable_quantity", "numeric"),
    ("pricing_model", "text"),
    ("unit_price", "numeric"),
    ("amount", "numeric"),
    ("credits_applied", "numeric"),
    ("credit_sources", "jsonb"),
    ("detail", "text"),
    ("aggregate_version", "bigint"),
    ("snapshot_version", "bigint"),
    ("event_count", "bigint"),
    ("last_event_id", "text"),
    ("last_event_at", "timestamptz"),
)
_LINE_NAMES = [name for name, _ in _LINE_COLUMNS]

# A batch's lines travel by binary COPY into a temporary staging table (one per connection, emptied
# at every COMMIT), then one UPDATE (stored lines) and one INSERT ... ON CONFLICT (new lines) read
# it. Binary, because psycopg formats timestamps in text at ~1.5 us each; numbers as their text
# (a Decimal's binary numeric costs ~1 us to build, its str ~0.25 us), cast by PostgreSQL. This
# replaced one binary array parameter per column, which psycopg built element by element in Python.
_STAGE = "rating_line_stage"
_STAGE_COLUMNS: tuple[tuple[str, str], ...] = (
    *((name, "text" if sqltype in ("numeric", "jsonb") else sqltype) for name, sqltype in _LINE_COLUMNS),
    ("stored", "boolean"),
)
assert [name for name, _ in _LINE_COLUMNS if name != "credit_sources"] == list(Line._fields)
_CREATE_STAGE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} "
    f"({', '.join(f'{name} {sqltype}' for name, sqltype in _STAGE_COLUMNS)}) ON COMMIT DELETE ROWS"
)
#: the stage's types as psycopg's binary dumpers name them
_STAGE_TYPES = [{"int": "int4", "bigint": "int8", "boolean": "bool"}.get(t, t) for _, t in _STAGE_COLUMNS]
_COPY_STAGE = f"COPY {_STAGE} ({', '.join(name for name, _ in _STAGE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"


def _staged(name: str) -> str:
    """The stage's column as the line_items column (numbers and JSON come as text)."""
    sqltype = dict(_LINE_COLUMNS)[name]
    return f"s.{name}::{sqltype}" if sqltype in ("numeric", "jsonb") else f"s.{name}"


_UPSERT_LINES = f"""
    INSERT INTO line_items ({", ".join(_LINE_NAMES)}, created_at, updated_at)
    SELECT {", ".join(_staged(n) for n in _LINE_NAMES)}, now(), now()
    FROM {_STAGE} AS s WHERE NOT s.stored
    ORDER BY s.line_key
    ON CONFLICT (line_key) DO UPDATE SET
        {", ".join(f"{n} = EXCLUDED.{n}" for n in _LINE_NAMES if n != "line_key")},
        updated_at = now()
    WHERE (EXCLUDED.charge = 'usage' AND line_items.aggregate_version < EXCLUDED.aggregate_version)
       OR (EXCLUDED.charge = 'base_fee' AND line_items.snapshot_version < EXCLUDED.snapshot_version)
    RETURNING charge
    """

#: what a newer version of a stored line can change (its identity columns never change)
_IDENTITY = {
    "aggregate_key",
    "customer_id",
    "subscription_id",
    "feature",
    "meter",
    "period_start",
    "period_end",
}
_UPDATE_NAMES = [name for name, _ in _LINE_COLUMNS if name not in _IDENTITY and name != "line_key"]
_UPDATE_LINES = f"""
    UPDATE line_items AS l SET
        {", ".join(f"{n} = {_staged(n)}" for n in _UPDATE_NAMES)},
        updated_at = now()
    FROM {_STAGE} AS s
    WHERE s.stored AND l.line_key = s.line_key
      AND ((s.charge = 'usage' AND l.aggregate_version < s.aggregate_version)
        OR (s.charge = 'base_fee' AND l.snapshot_version < s.snapshot_version))
    RETURNING l.charge
    """


def _counted(statement: str) -> str:
    """`statement` (... RETURNING charge) answering one row, (lines written, of which usage lines):
    fetching a row per line through SQLAlchemy held the GIL ~1 us a line on the writer thread."""
    return f"WITH written AS ({statement}) SELECT count(*), count(*) FILTER (WHERE charge = 'usage') FROM written"


_COUNTED_UPDATE = _counted(_UPDATE_LINES)
_COUNTED_UPSERT = _counted(_UPSERT_LINES)


def prepare_connection(dbapi_connection: Any, record: Any, _proxy: Any = None) -> None:
    """Create this connection's staging table once (a `checkout` listener: see `install`)."""
    if record.info.get(_STAGE):
        return
    try:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(_CREATE_STAGE)
        finally:
            dbapi_connection.autocommit = autocommit
    except psycopg.OperationalError as exc:
        # the connection died after the pool's ping: the pool retries with another (or raises
        # its usual OperationalError when the server is down, which the consumer waits out)
        raise DisconnectionError(f"preparing the rating staging table: {exc}") from exc
    record.info[_STAGE] = True  # .info lives as long as the DBAPI connection (a reconnect starts empty)


def install(engine: Engine) -> None:
    """Give every connection of `engine` the temporary staging table `write_lines` copies into.

    At checkout, outside any transaction: created inside a batch's transaction, a rollback would
    drop it while the connection still looked prepared.
    """
    if not event.contains(engine, "checkout", prepare_connection):
        event.listen(engine, "checkout", prepare_connection)


def _sources_json(sources: Mapping[str, Decimal] | None) -> str | None:
    if not sources:
        return None
    return json.dumps({grant_id: str(amount) for grant_id, amount in sorted(sources.items())})


_LOAD_LINES = (
    f"SELECT {', '.join(Line._fields)}, credit_sources FROM line_items "
    "WHERE aggregate_key = ANY(%(keys)s::text[])"
)
_CHARGES = {charge.value: charge for charge in ChargeType}
_STATUSES = {status.value: status for status in ChargeStatus}


def load_lines(
    conn: Connection, aggregate_keys: Collection[str]
) -> tuple[dict[str, dict[str, Line]], dict[str, dict[str, Decimal]]]:
    """The stored lines of `aggregate_keys` (every key present, maybe empty) and their credit sources."""
    lines: dict[str, dict[str, Line]] = {key: {} for key in aggregate_keys}
    credits: dict[str, dict[str, Decimal]] = {}
    if not aggregate_keys:
        return lines, credits
    charges, statuses = _CHARGES, _STATUSES
    for row in conn.exec_driver_sql(_LOAD_LINES, {"keys": text_array(aggregate_keys)}):
        # line_key, aggregate_key, ..., feature, meter, charge (8), status (9), ..., credit_sources
        line = Line._make((*row[:8], charges[row[8]], statuses[row[9]], *row[10:-1]))
        lines[line.aggregate_key][line.line_key] = line  # type: ignore[index]
        sources = row[-1]
        if sources:
            credits[line.line_key] = {grant_id: Decimal(amount) for grant_id, amount in sources.items()}
    return lines, credits


def load_fee_lines(
    conn: Connection, pairs: Collection[tuple[str, datetime]]
) -> dict[tuple[str, datetime], dict[str, Line]]:
    """The stored base-fee and add-on fee lines (charge `base_fee`) of (customer, period start)
    pairs, every pair present (maybe empty). They draw no credit, so none is loaded."""
    found: dict[tuple[str, datetime], dict[str, Line]] = {pair: {} for pair in pairs}
    if not pairs:
        return found
    ordered = sorted(pairs)
    rows = conn.execute(
        text(
            f"SELECT {', '.join(f'l.{name}' for name in _LINE_NAMES if name != 'credit_sources')} "
            "FROM unnest(CAST(:customers AS text[]), CAST(:periods AS timestamptz[])) AS t(customer_id, period_start) "
            "JOIN line_items AS l ON l.customer_id = t.customer_id AND l.period_start = t.period_start "
            "WHERE l.charge = 'base_fee'"
        ),
        {"customers": [c for c, _ in ordered], "periods": [p for _, p in ordered]},
    )
    for row in rows:
        values = row._asdict()
        values["charge"] = ChargeType(values["charge"])
        values["status"] = ChargeStatus(values["status"])
        line = Line(**values)
        found.setdefault((line.customer_id, line.period_start), {})[line.line_key] = line
    return found


@dataclass(frozen=True)
class StagedLines:
    """A batch's lines formatted for the staging table (binary COPY data), ready to be sent."""

    data: bytes
    lines: int
    updates: int  # of which known to be stored
    usage: int  # of which usage lines (each must be newer than the stored one)


def stage_lines(
    conn: Connection,
    lines: Sequence[Line],
    credits: Mapping[str, Mapping[str, Decimal]],
    stored: Collection[str] = frozenset(),
) -> StagedLines:
    """Format `lines` (each key once) as COPY data for `write_lines`: CPU only, no round trip, so it
    can be done while another thread waits for PostgreSQL."""
    usage = ChargeType.USAGE
    updates = usage_lines = 0
    buffer = io.BytesIO()
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor, Copy(cursor, binary=True, writer=FileWriter(buffer)) as copy:
        copy.set_types(_STAGE_TYPES)
        write = copy.write_row
        for line in sorted(lines):  # by line_key: rows are locked in one order by every writer
            update = line.line_key in stored
            updates += update
            if line.charge is usage:
                usage_lines += 1
                sources = _sources_json(credits.get(line.line_key))
            else:
                sources = None
            write(
                (
                    *line[:14],  # line_key .. currency
                    str(line.quantity),
                    str(line.included_quantity),
                    str(line.billable_quantity),
                    line.pricing_model,
                    None if line.unit_price is None else str(line.unit_price),
                    str(line.amount),
                    str(line.credits_applied),
                    sources,
                    *line[21:],  # detail .. last_event_at
                    update,
                )
            )
    return StagedLines(buffer.getvalue(), len(lines), updates, usage_lines)


def write_lines(conn: Connection, staged: StagedLines) -> int:
    """Write staged lines; usage lines only ever move to a newer aggregate version.

    Lines known to be stored are updated in place, sending only what can change; the others are
    inserted (an upsert, guarded the same way, in case one exists after all). Needs the staging
    table of `install(engine)`.
    """
    if not staged.lines:
        return 0
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor, cursor.copy(_COPY_STAGE) as copy:
        copy.write(staged.data)  # signature, rows and trailer, as stage_lines formatted them
    written = usage = 0
    if staged.updates:
        lines, usage_lines = conn.exec_driver_sql(_COUNTED_UPDATE).one()
        written, usage = written + lines, usage + usage_lines
    if staged.updates < staged.lines:
        lines, usage_lines = conn.exec_driver_sql(_COUNTED_UPSERT).one()
        written, usage = written + lines, usage + usage_lines
    if usage != staged.usage:
        raise IntegrityFault(
            f"{staged.usage} usage line(s) computed but only {usage} were newer than the stored ones"
        )
    return written


# -- credit ------------------------------------------------------------------------------------


def credit_customers(conn: Connection, customers: Collection[str]) -> set[str]:
    """Which of `customers` have a credit account, without locking (a hint: an account can appear
    right after; `load_credit` is the answer that counts)."""
    if not customers:
        return set()
    rows = conn.exec_driver_sql(
        "SELECT DISTINCT customer_id FROM credit_accounts WHERE customer_id = ANY(%(customers)s::text[])",
        {"customers": text_array(customers)},
    )
    return {customer for (customer,) in rows}


#: the accounts of the customers, locked in one order (no deadlock between writers), with their
#: grants: one round trip (the lock covers only the accounts; grants change under them)
_LOAD_CREDIT = """
    WITH accounts AS MATERIALIZED (
        SELECT customer_id, currency, depletions FROM credit_accounts
        WHERE customer_id = ANY(%(customers)s::text[])
        ORDER BY customer_id, currency FOR UPDATE
    )
    SELECT a.customer_id, a.currency, a.depletions, g.grant_id, g.amount, g.priority, g.granted_at,
           g.effective_at, g.expires_at, g.description, g.remaining, g.expired
    FROM accounts AS a
    LEFT JOIN credit_grants AS g ON g.customer_id = a.customer_id AND g.currency = a.currency
    ORDER BY a.customer_id, a.currency, g.grant_id
    """


def load_credit(conn: Connection, customers: Collection[str]) -> dict[tuple[str, str], Wallet]:
    """Lock and load the credit wallets of `customers` that have a credit account."""
    wallets: dict[tuple[str, str], Wallet] = {}
    if not customers:
        return wallets
    rows = conn.exec_driver_sql(_LOAD_CREDIT, {"customers": text_array(customers)})
    for (
        customer_id,
        currency,
        depletions,
        grant_id,
        amount,
        priority,
        granted_at,
        effective_at,
        expires_at,
        description,
        remaining,
        expired,
    ) in rows:
        wallet = wallets.get((customer_id, currency))
        if wallet is None:
            wallet = wallets[(customer_id, currency)] = Wallet(customer_id, currency, depletions=depletions)
        if grant_id is None:  # an account without grants
            continue
        wallet.grants[grant_id] = Grant(
            grant_id=grant_id,
            customer_id=customer_id,
            currency=currency,
            amount=amount,
            priority=priority,
            granted_at=granted_at,
            effective_at=effective_at,
            expires_at=expires_at,
            description=description,
        )
        wallet.remaining[grant_id] = remaining
        if expired:
            wallet.expired.add(grant_id)
    return wallets


_ENTRY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("idempotency_key", "text"),
    ("customer_id", "text"),
    ("currency", "text"),
    ("grant_id", "text"),
    ("entry_type", "text"),
    ("amount", "numeric"),
    ("effective_at", "timestamptz"),
    ("line_key", "text"),
    ("aggregate_version", "bigint"),
    ("note", "text"),
)
_ENTRY_NAMES = [name for name, _ in _ENTRY_COLUMNS]

_INSERT_ENTRIES = f"""
    INSERT INTO credit_ledger ({", ".join(_ENTRY_NAMES)})
    SELECT * FROM unnest({_arrays(_ENTRY_COLUMNS)})
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING idempotency_key, entry_id, customer_id, currency
    """

_MOVE_GRANTS = """
    UPDATE credit_grants AS g
    SET remaining = g.remaining + d.delta, expired = g.expired OR d.expired
    FROM (
        SELECT grant_id, sum(amount) AS delta, bool_or(expired) AS expired
        FROM unnest(%(grant_id)b::text[], %(amount)b::text[]::numeric[], %(expired)b::boolean[])
            AS u(grant_id, amount, expired)
        GROUP BY grant_id
    ) AS d
    WHERE g.grant_id = d.grant_id
    """


def write_entries(conn: Connection, entries: Sequence[Entry]) -> None:
    """Append `entries` and move their grants' running figures, in the caller's transaction.

    An entry whose idempotency key already exists means the fold worked from stale state: that is
    our fault, so it raises instead of skipping (the transaction rolls back whole).
    """
    if not entries:
        return
    columns: dict[str, list[Any]] = {name: [] for name in _ENTRY_NAMES}
    for entry in entries:
        for name in _ENTRY_NAMES:
            value = getattr(entry, name)
            columns[name].append(value.value if name == "entry_type" else value)
    columns["amount"] = _texts(columns["amount"])
    inserted = conn.exec_driver_sql(_INSERT_ENTRIES, columns).all()
    if len(inserted) != len(entries):
        missing = sorted({e.idempotency_key for e in entries} - {row[0] for row in inserted})[:3]
        raise IntegrityFault(f"ledger entries already present (replayed from stale state?): {missing}")
    conn.exec_driver_sql(
        _MOVE_GRANTS,
        {
            "grant_id": [e.grant_id for e in entries],
            "amount": _texts(e.amount for e in entries),
            "expired": [
                e.entry_type is EntryType.EXPIRY and e.idempotency_key == grant_expiry_key(e.grant_id)
                for e in entries
            ],
        },
    )
    newest: dict[str, tuple[int, str]] = {}  # customer -> (its newest entry id, that entry's currency)
    for _, entry_id, customer_id, currency in inserted:
        if customer_id not in newest or entry_id > newest[customer_id][0]:
            newest[customer_id] = (entry_id, currency)
    record_balances(conn, newest)


# -- balance outbox (rule 9 of metergate.domain.ledger) ----------------------------------------

_RECORD_BALANCES = """
    INSERT INTO balance_outbox (customer_id, ledger_position, currency, balance, as_of)
    SELECT u.customer_id, u.position, u.currency,
           (SELECT coalesce(sum(g.remaining), 0) FROM credit_grants AS g
            WHERE g.customer_id = u.customer_id AND g.currency = u.currency),
           now()
    FROM unnest(%(customer)b::text[], %(position)b::int8[], %(currency)b::text[]) AS u(customer_id, position, currency)
    ORDER BY u.customer_id
    ON CONFLICT (customer_id, ledger_position) DO NOTHING
    """


def record_balances(conn: Connection, newest: Mapping[str, tuple[int, str]]) -> None:
    """Record each customer's balance at its newest entry (`customer -> (entry_id, currency)`) in the
    balance outbox, in the caller's transaction, after its entries moved the grants' running
    figures: the sum of `credit_grants.remaining`, which equals the sum of the entries (rule 1).
    Called by `write_entries`, so no ledger change goes unpublished."""
    if not newest:
        return
    customers = sorted(newest)
    conn.exec_driver_sql(
        _RECORD_BALANCES,
        {
            "customer": customers,
            "position": [newest[c][0] for c in customers],
            "currency": [newest[c][1] for c in customers],
        },
    )


@dataclass(frozen=True)
class RecordedBalance:
    customer_id: str
    ledger_position: int
    currency: str
    balance: Decimal
    as_of: datetime


def claim_unpublished_balances(conn: Connection, limit: int = 10000) -> list[RecordedBalance]:
    """Lock and return unpublished balance_outbox rows no other transaction holds (SKIP LOCKED);
    held until the caller's COMMIT. Which to send: `metergate.domain.ledger.balances_to_publish`."""
    rows = conn.execute(
        text(
            "SELECT customer_id, ledger_position, currency, balance, as_of FROM balance_outbox "
            "WHERE published_at IS NULL ORDER BY customer_id, ledger_position LIMIT :limit "
            "FOR UPDATE SKIP LOCKED"
        ),
        {"limit": limit},
    )
    return [RecordedBalance(*row) for row in rows]


def recorded_balances(conn: Connection, customers: Collection[str]) -> list[BalanceRow]:
    """Every recorded balance of `customers`, published or not, whoever holds it (no lock)."""
    if not customers:
        return []
    rows = conn.execute(
        text(
            "SELECT customer_id, ledger_position, published_at IS NOT NULL FROM balance_outbox "
            "WHERE customer_id = ANY(:customers)"
        ),
        {"customers": sorted(customers)},
    )
    return [BalanceRow(c, int(p), bool(published)) for c, p, published in rows]


def drop_balances(conn: Connection, rows: Sequence[tuple[str, int]]) -> None:
    """Delete held balances that will never be sent (a newer one of the customer exists)."""
    if rows:
        conn.exec_driver_sql(
            "DELETE FROM balance_outbox AS b USING unnest(%(customer)b::text[], %(position)b::int8[]) "
            "AS u(customer_id, position) WHERE b.customer_id = u.customer_id AND b.ledger_position = u.position",
            {"customer": [c for c, _ in rows], "position": [p for _, p in rows]},
        )


def mark_balances_published(conn: Connection, rows: Sequence[tuple[str, int]]) -> None:
    """Mark delivered balances published and forget the customers' older published ones (the table
    keeps each customer's newest published balance and anything newer)."""
    if not rows:
        return
    params = {"customer": [c for c, _ in rows], "position": [p for _, p in rows]}
    conn.exec_driver_sql(
        "UPDATE balance_outbox AS b SET published_at = now() "
        "FROM unnest(%(customer)b::text[], %(position)b::int8[]) AS u(customer_id, position) "
        "WHERE b.customer_id = u.customer_id AND b.ledger_position = u.position",
        params,
    )
    conn.exec_driver_sql(
        "DELETE FROM balance_outbox AS b USING unnest(%(customer)b::text[], %(position)b::int8[]) "
        "AS u(customer_id, position) WHERE b.customer_id = u.customer_id "
        "AND b.ledger_position < u.position AND b.published_at IS NOT NULL",
        params,
    )


def write_depletions(conn: Connection, depletions: Iterable[tuple[Depletion, str, bytes]]) -> None:
    """Record depletions: the account's counter and one outbox row per LimitEvent (id, payload)."""
    rows = list(depletions)
    if not rows:
        return
    counters: dict[tuple[str, str], int] = {}
    for depletion, _, _ in rows:
        key = (depletion.customer_id, depletion.currency)
        counters[key] = max(counters.get(key, 0), depletion.sequence)
    conn.execute(
        text(
            "UPDATE credit_accounts SET depletions = :depletions, updated_at = now() "
            "WHERE customer_id = :customer AND currency = :currency"
        ),
        [{"customer": c, "currency": cur, "depletions": n} for (c, cur), n in sorted(counters.items())],
    )
    conn.execute(
        text(
            "INSERT INTO limit_outbox (limit_event_id, customer_id, kind, payload) "
            "VALUES (:id, :customer, 'credits_depleted', :payload) ON CONFLICT (limit_event_id) DO NOTHING"
        ),
        [{"id": event_id, "customer": d.customer_id, "payload": payload} for d, event_id, payload in rows],
    )


def unpublished_limits(conn: Connection, limit: int = 10000) -> list[tuple[str, str, bytes]]:
    rows = conn.execute(
        text(
            "SELECT limit_event_id, customer_id, payload FROM limit_outbox WHERE published_at IS NULL "
            "ORDER BY created_at, limit_event_id LIMIT :limit"
        ),
        {"limit": limit},
    )
    return [(r.limit_event_id, r.customer_id, bytes(r.payload)) for r in rows]


def claim_unpublished_limits(conn: Connection, limit: int = 10000) -> list[tuple[str, str, bytes]]:
    """Lock and return unpublished limit_outbox rows no other transaction holds (SKIP LOCKED), so
    two consumers publishing at once never send one row twice; held until the caller's COMMIT."""
    rows = conn.execute(
        text(
            "SELECT limit_event_id, customer_id, payload FROM limit_outbox WHERE published_at IS NULL "
            "ORDER BY created_at, limit_event_id LIMIT :limit FOR UPDATE SKIP LOCKED"
        ),
        {"limit": limit},
    )
    return [(r.limit_event_id, r.customer_id, bytes(r.payload)) for r in rows]


def mark_published(conn: Connection, event_ids: Sequence[str]) -> None:
    if event_ids:
        conn.execute(
            text("UPDATE limit_outbox SET published_at = now() WHERE limit_event_id = ANY(:ids)"),
            {"ids": list(event_ids)},
        )


# -- invoice sync outbox -----------------------------------------------------------------------

_REFRESH_INVOICES = """
    INSERT INTO invoice_sync AS s (customer_id, period_start, currency, period_end, subscription_id,
                                   amount_total, credits_applied, amount_due, line_count)
    SELECT t.customer_id, t.period_start, g.currency, g.period_end, g.subscription_id,
           g.amount_total, g.credits_applied, g.amount_due, g.line_count
    FROM unnest(%(customer)s::text[], %(period)s::timestamptz[]) AS t(customer_id, period_start)
    CROSS JOIN LATERAL (
        -- per pair, through line_items_customer_period: the planner otherwise scanned and sorted
        -- the whole table (it cannot tell how many pairs the arrays hold)
        SELECT l.currency, max(l.period_end) AS period_end, max(l.subscription_id) AS subscription_id,
               sum(l.amount) AS amount_total, sum(l.credits_applied) AS credits_applied,
               sum(l.amount_due) AS amount_due, count(*) AS line_count
        FROM line_items AS l
        WHERE l.customer_id = t.customer_id AND l.period_start = t.period_start
          AND l.status <> 'superseded'
        GROUP BY l.currency
    ) AS g
    ORDER BY t.customer_id, t.period_start, g.currency
    ON CONFLICT (customer_id, period_start, currency) DO UPDATE SET
        period_end = EXCLUDED.period_end,
        subscription_id = EXCLUDED.subscription_id,
        amount_total = EXCLUDED.amount_total,
        credits_applied = EXCLUDED.credits_applied,
        amount_due = EXCLUDED.amount_due,
        line_count = EXCLUDED.line_count,
        revision = s.revision + 1,
        status = 'pending',
        updated_at = now()
    WHERE (s.amount_total, s.credits_applied, s.line_count, s.subscription_id, s.period_end)
          IS DISTINCT FROM
          (EXCLUDED.amount_total, EXCLUDED.credits_applied, EXCLUDED.line_count, EXCLUDED.subscription_id,
           EXCLUDED.period_end)
    """


#: One customer's meters hash to different partitions, so two workers can refresh one invoice row
#: in overlapping transactions. The refresh computes its totals from the statement's snapshot:
#: run while the other transaction is uncommitted, it misses that one's lines, then waits for the
#: row and overwrites it with stale totals. So the refresh first takes transaction locks on the
#: customers' lock buckets (in one order: no deadlock; held until COMMIT), and starts after the
#: other committed. Buckets, not one lock per customer: a batch holds thousands of customers, and
#: PostgreSQL's shared lock table (max_locks_per_transaction x connections, 6,400 by default) would
#: run out; a batch touches nearly every bucket anyway, so this costs no parallelism.
_LOCK_BUCKETS = 128
_LOCK_CUSTOMERS = f"""
    SELECT pg_advisory_xact_lock(%(namespace)s, k)
    FROM (
        SELECT DISTINCT hashtext(c) & {_LOCK_BUCKETS - 1} AS k FROM unnest(%(customer)s::text[]) AS c ORDER BY k
    ) AS ordered
    """
_INVOICE_LOCKS = 0x52415445  # the advisory-lock namespace of invoice refreshes ("RATE")


def refresh_invoices(conn: Connection, pairs: Collection[tuple[str, datetime]]) -> None:
    """Recompute the invoice-sync rows of (customer, period) pairs whose lines changed.

    A row whose totals change gets a new revision and goes back to `pending`, so the billing push
    adapter sends it again; a recomputation that changes nothing leaves the row alone. Takes the
    customers' invoice locks first (see `_LOCK_CUSTOMERS`), held until the caller's COMMIT.
    """
    if not pairs:
        return
    ordered = sorted(pairs)
    conn.exec_driver_sql(
        _LOCK_CUSTOMERS,
        {
            "namespace": _INVOICE_LOCKS,
            "customer": text_array({c for c, _ in ordered}),
        },  # SQL orders the locks
    )
    periods = {p: p.isoformat() for p in {p for _, p in ordered}}  # a handful of distinct periods
    conn.exec_driver_sql(
        _REFRESH_INVOICES,
        {
            "customer": text_array([c for c, _ in ordered]),
            "period": "{" + ",".join([periods[p] for _, p in ordered]) + "}",
        },
    )
