"""SQLAlchemy Core tables of the rating side (schema owned by migration 0002; tables unqualified).

Used for reads and small writes (CLI, finance export, tests). The rating consumer's hot path
writes with `unnest` array statements in `metergate.db.rating_store`.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()

QUANTITY = sa.Numeric(asdecimal=True)
MONEY = sa.Numeric(asdecimal=True)
PRICE = sa.Numeric(asdecimal=True)
TS = sa.DateTime(timezone=True)

consumer_offsets = sa.Table(
    "consumer_offsets",
    metadata,
    sa.Column("consumer_group", sa.Text, primary_key=True),
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
    sa.Column("updated_at", TS),
)

line_items = sa.Table(
    "line_items",
    metadata,
    sa.Column("line_key", sa.Text, primary_key=True),
    sa.Column("aggregate_key", sa.Text),
    sa.Column("customer_id", sa.Text),
    sa.Column("subscription_id", sa.Text),
    sa.Column("plan_key", sa.Text),
    sa.Column("plan_version", sa.Integer),
    sa.Column("feature", sa.Text),
    sa.Column("meter", sa.Text),
    sa.Column("charge", sa.Text),
    sa.Column("status", sa.Text),
    sa.Column("unpriced_reason", sa.Text),
    sa.Column("period_start", TS),
    sa.Column("period_end", TS),
    sa.Column("currency", sa.String(3)),
    sa.Column("quantity", QUANTITY),
    sa.Column("included_quantity", QUANTITY),
    sa.Column("billable_quantity", QUANTITY),
    sa.Column("pricing_model", sa.Text),
    sa.Column("unit_price", PRICE),
    sa.Column("amount", MONEY),
    sa.Column("credits_applied", MONEY),
    sa.Column("amount_due", MONEY),
    sa.Column("credit_sources", postgresql.JSONB),
    sa.Column("detail", sa.Text),
    sa.Column("aggregate_version", sa.BigInteger),
    sa.Column("snapshot_version", sa.BigInteger),
    sa.Column("event_count", sa.BigInteger),
    sa.Column("last_event_id", sa.Text),
    sa.Column("last_event_at", TS),
    sa.Column("created_at", TS),
    sa.Column("updated_at", TS),
)

credit_accounts = sa.Table(
    "credit_accounts",
    metadata,
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("currency", sa.String(3), primary_key=True),
    sa.Column("depletions", sa.Integer),
    sa.Column("created_at", TS),
    sa.Column("updated_at", TS),
)

credit_grants = sa.Table(
    "credit_grants",
    metadata,
    sa.Column("grant_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text),
    sa.Column("currency", sa.String(3)),
    sa.Column("amount", MONEY),
    sa.Column("priority", sa.Integer),
    sa.Column("granted_at", TS),
    sa.Column("effective_at", TS),
    sa.Column("expires_at", TS),
    sa.Column("description", sa.Text),
    sa.Column("remaining", MONEY),
    sa.Column("expired", sa.Boolean),
)

credit_ledger = sa.Table(
    "credit_ledger",
    metadata,
    sa.Column("entry_id", sa.BigInteger, primary_key=True),
    sa.Column("idempotency_key", sa.Text),
    sa.Column("customer_id", sa.Text),
    sa.Column("currency", sa.String(3)),
    sa.Column("grant_id", sa.Text),
    sa.Column("entry_type", sa.Text),
    sa.Column("amount", MONEY),
    sa.Column("effective_at", TS),
    sa.Column("line_key", sa.Text),
    sa.Column("aggregate_version", sa.BigInteger),
    sa.Column("note", sa.Text),
    sa.Column("recorded_at", TS),
)

limit_outbox = sa.Table(
    "limit_outbox",
    metadata,
    sa.Column("limit_event_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text),
    sa.Column("kind", sa.Text),
    sa.Column("payload", sa.LargeBinary),
    sa.Column("created_at", TS),
    sa.Column("published_at", TS),
)

invoice_sync = sa.Table(
    "invoice_sync",
    metadata,
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("period_start", TS, primary_key=True),
    sa.Column("currency", sa.String(3), primary_key=True),
    sa.Column("period_end", TS),
    sa.Column("subscription_id", sa.Text),
    sa.Column("amount_total", MONEY),
    sa.Column("credits_applied", MONEY),
    sa.Column("amount_due", MONEY),
    sa.Column("line_count", sa.Integer),
    sa.Column("revision", sa.Integer),
    sa.Column("status", sa.Text),
    sa.Column("synced_revision", sa.Integer),
    sa.Column("external_invoice_id", sa.Text),
    sa.Column("created_at", TS),
    sa.Column("updated_at", TS),
    sa.Column("synced_at", TS),
)

# views (read-only)
finance_line_items = sa.Table(
    "finance_line_items",
    metadata,
    *(
        sa.Column(name, type_)
        for name, type_ in (
            ("period_start", TS),
            ("period_end", TS),
            ("customer_id", sa.Text),
            ("subscription_id", sa.Text),
            ("plan_key", sa.Text),
            ("plan_version", sa.Integer),
            ("charge", sa.Text),
            ("feature", sa.Text),
            ("meter", sa.Text),
            ("status", sa.Text),
            ("unpriced_reason", sa.Text),
            ("currency", sa.String(3)),
            ("quantity", QUANTITY),
            ("included_quantity", QUANTITY),
            ("billable_quantity", QUANTITY),
            ("pricing_model", sa.Text),
            ("unit_price", PRICE),
            ("amount", MONEY),
            ("credits_applied", MONEY),
            ("amount_due", MONEY),
            ("aggregate_version", sa.BigInteger),
            ("snapshot_version", sa.BigInteger),
            ("event_count", sa.BigInteger),
            ("last_event_id", sa.Text),
            ("line_key", sa.Text),
            ("updated_at", TS),
        )
    ),
)
