"""Catalog and subscriptions as the system of record: products, plans, immutable published plan
versions, features, add-ons, customers, subscriptions with dated versions, audit, catalog outbox.

Revision ID: 0004_subscriptions
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004_subscriptions"
down_revision = "0003"
branch_labels = None
depends_on = None

MONEY = sa.Numeric()  # exact; reads back with the scale it was written with
TS = sa.DateTime(timezone=True)
JSONB = postgresql.JSONB


def _now() -> sa.TextClause:
    return sa.text("now()")


def _immutable(table: str) -> None:
    """Rows of `table` are written once: an UPDATE or DELETE is refused by the database itself."""
    op.execute(
        f"""
        CREATE FUNCTION {table}_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '{table} rows are immutable: publish a new version instead'
                USING ERRCODE = 'integrity_constraint_violation';
        END $$
        """
    )
    op.execute(
        f"CREATE TRIGGER {table}_no_update BEFORE UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {table}_immutable()"
    )


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("product_key", sa.Text, primary_key=True),
        sa.Column("name", sa.Text),
        sa.Column("created_at", TS, nullable=False, server_default=_now()),
    )
    op.create_table(
        "features",
        sa.Column("feature_key", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("meter", sa.Text),
        sa.Column("description", sa.Text),
        sa.Column("created_at", TS, nullable=False, server_default=_now()),
        sa.CheckConstraint("kind IN ('boolean', 'config', 'metered')", name="features_kind"),
        sa.CheckConstraint("(kind = 'metered') = (meter IS NOT NULL)", name="features_meter"),
    )
    op.create_table(
        "plans",
        sa.Column("plan_key", sa.Text, primary_key=True),
        sa.Column("product_key", sa.Text, sa.ForeignKey("products.product_key")),
        sa.Column("name", sa.Text),
        sa.Column("created_at", TS, nullable=False, server_default=_now()),
    )
    op.create_table(
        "plan_versions",
        sa.Column("plan_key", sa.Text, sa.ForeignKey("plans.plan_key"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("base_fee", MONEY, nullable=False),
        sa.Column("reset_period", sa.Text, nullable=False),
        sa.Column(
            "features",
            JSONB,
            nullable=False,
            comment="feature key -> FeatureEntitlement (JSON, decimals as text)",
        ),
        sa.Column(
            "variable",
            JSONB,
            nullable=False,
            comment="negotiated paths: config feature or feature.included/.limit",
        ),
        sa.Column("add_ons", JSONB, nullable=False, comment="keys of the add-ons this version allows"),
        sa.Column("published_at", TS, nullable=False, server_default=_now()),
        sa.Column("published_by", sa.Text, nullable=False),
        sa.CheckConstraint("version >= 1", name="plan_versions_version"),
        sa.CheckConstraint("base_fee >= 0", name="plan_versions_base_fee"),
    )
    _immutable("plan_versions")
    op.create_table(
        "add_ons",
        sa.Column("add_on_key", sa.Text, primary_key=True),
        sa.Column("name", sa.Text),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("fee", MONEY, nullable=False, comment="per unit, per billing period"),
        sa.Column("features", JSONB, nullable=False),
        sa.Column("max_quantity", sa.Integer),
        sa.Column("published_at", TS, nullable=False, server_default=_now()),
        sa.Column("published_by", sa.Text, nullable=False),
        sa.CheckConstraint("fee >= 0", name="add_ons_fee"),
    )
    _immutable("add_ons")
    op.create_table(
        "customers",
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text),
        sa.Column("created_at", TS, nullable=False, server_default=_now()),
        sa.Column("created_by", sa.Text, nullable=False),
    )
    op.create_table(
        "subscriptions",
        sa.Column("subscription_id", sa.Text, primary_key=True),
        sa.Column("customer_id", sa.Text, sa.ForeignKey("customers.customer_id"), nullable=False),
        sa.Column("anchor", TS, nullable=False),
        sa.Column("reset_period", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=_now()),
        sa.Column("updated_at", TS, nullable=False, server_default=_now()),
    )
    op.create_index("subscriptions_customer", "subscriptions", ["customer_id"])
    op.create_table(
        "subscription_versions",
        sa.Column(
            "subscription_id", sa.Text, sa.ForeignKey("subscriptions.subscription_id"), primary_key=True
        ),
        sa.Column("number", sa.Integer, primary_key=True),
        sa.Column("plan_key", sa.Text, nullable=False),
        sa.Column("plan_version", sa.Integer, nullable=False),
        sa.Column("effective_from", TS, nullable=False),
        sa.Column("effective_to", TS, comment="NULL: open"),
        sa.Column("add_ons", JSONB, nullable=False, comment="add-on key -> quantity"),
        sa.Column("variables", JSONB, nullable=False, comment="negotiated path -> value (text)"),
        sa.Column("overrides", JSONB, nullable=False, comment="base_fee, pricing per feature, add_on_fees"),
        sa.Column("change", sa.Text, nullable=False),
        sa.Column("recorded_at", TS, nullable=False, server_default=_now()),
        sa.ForeignKeyConstraint(
            ["plan_key", "plan_version"], ["plan_versions.plan_key", "plan_versions.version"]
        ),
        sa.CheckConstraint(
            "effective_to IS NULL OR effective_to > effective_from", name="subscription_versions_interval"
        ),
    )
    op.create_index("subscription_versions_plan", "subscription_versions", ["plan_key", "plan_version"])
    op.create_table(
        "audit_log",
        sa.Column("audit_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("who", sa.Text, nullable=False, comment="API key name or CLI user"),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("entity", sa.Text, nullable=False),
        sa.Column("entity_id", sa.Text, nullable=False),
        sa.Column("before", JSONB),
        sa.Column("after", JSONB),
    )
    op.create_index("audit_log_entity", "audit_log", ["entity", "entity_id"])
    op.execute(
        """
        CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'integrity_constraint_violation';
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
    )
    op.create_table(
        "catalog_outbox",
        sa.Column("outbox_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("created_at", TS, nullable=False, server_default=_now()),
        sa.Column("topic", sa.Text, nullable=False, comment="logical topic, e.g. entitlements.snapshots"),
        sa.Column("message_key", sa.Text, nullable=False),
        sa.Column("subscription_id", sa.Text),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column(
            "available_at", TS, nullable=False, comment="not published before (terms taking effect later)"
        ),
        sa.Column("superseded_by", sa.BigInteger, comment="a later change of the subscription replaced it"),
        sa.Column("published_at", TS, comment="NULL until the relay has published it"),
        sa.Column("published_version", sa.BigInteger, comment="the snapshot version the relay stamped"),
    )
    op.create_index(
        "catalog_outbox_pending",
        "catalog_outbox",
        ["available_at", "outbox_id"],
        postgresql_where=sa.text("published_at IS NULL AND superseded_by IS NULL"),
    )
    op.create_index("catalog_outbox_subscription", "catalog_outbox", ["subscription_id"])
    op.create_index("catalog_outbox_key_version", "catalog_outbox", ["message_key", "published_version"])


def downgrade() -> None:
    for table in (
        "catalog_outbox",
        "audit_log",
        "subscription_versions",
        "subscriptions",
        "customers",
        "add_ons",
        "plan_versions",
        "plans",
        "features",
        "products",
    ):
        op.drop_table(table)
    for function in ("audit_log_append_only", "add_ons_immutable", "plan_versions_immutable"):
        op.execute(f"DROP FUNCTION IF EXISTS {function}()")
