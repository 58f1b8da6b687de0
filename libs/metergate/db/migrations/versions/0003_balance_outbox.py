"""Balance outbox: every credit-ledger change records the customer's balance, relayed to credits.balances.

One row per (customer, ledger position), written in the transaction that wrote the ledger entries
(`metergate.db.rating_store.write_entries`); rating's outbox relay publishes the newest row of each
customer and marks it published (rule 9 of `metergate.domain.ledger`). Customers that already have
ledger entries get one row with their current balance, so the topic starts complete.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "balance_outbox",
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column(
            "ledger_position",
            sa.BigInteger,
            primary_key=True,
            comment="highest credit_ledger.entry_id of the customer this balance includes",
        ),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column(
            "balance",
            sa.Numeric(),
            nullable=False,
            comment="sum of the customer's ledger entries in currency (= what its grants have left)",
        ),
        sa.Column("as_of", TS, nullable=False, server_default=sa.text("now()")),
        sa.Column("published_at", TS),
    )
    op.create_index(
        "balance_outbox_unpublished",
        "balance_outbox",
        ["customer_id", "ledger_position"],
        postgresql_where=sa.text("published_at IS NULL"),
    )
    # the current balance of every customer with entries, at its newest entry's currency
    op.execute(
        """
        INSERT INTO balance_outbox (customer_id, ledger_position, currency, balance)
        SELECT n.customer_id, n.entry_id, n.currency,
               (SELECT coalesce(sum(e.amount), 0) FROM credit_ledger AS e
                WHERE e.customer_id = n.customer_id AND e.currency = n.currency)
        FROM (
            SELECT DISTINCT ON (customer_id) customer_id, entry_id, currency
            FROM credit_ledger ORDER BY customer_id, entry_id DESC
        ) AS n
        """
    )


def downgrade() -> None:
    op.drop_table("balance_outbox")
