"""People's budgets and limits, service keys that name the person, and the person charged in the ledger.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_limits",
        sa.Column("id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("max_budget", sa.Float()),
        sa.Column("budget_duration", sa.String(16)),
        sa.Column("budget_reset_at", sa.DateTime(timezone=True)),
        sa.Column("max_tokens_budget", sa.BigInteger()),
        sa.Column("spend", sa.Float(), nullable=False),
        sa.Column("tokens_used", sa.BigInteger(), nullable=False),
        sa.Column("tpm_limit", sa.Integer()),
        sa.Column("rpm_limit", sa.Integer()),
        sa.Column("max_parallel_requests", sa.Integer()),
        sa.Column("blocked", sa.Boolean(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    # existing keys trust no header: the server default fills them, then stays as the column's default
    op.add_column("api_keys", sa.Column("trust_user_headers", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("usage", sa.Column("person_id", sa.String(32)))  # nullable, no default: instant
    # a person named by a UI's header is an e-mail address (up to 254 characters). PostgreSQL widens a
    # varchar in place; SQLite does not enforce lengths (rebuilding its ledger table would cost minutes)
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("usage", "person", type_=sa.String(254), existing_type=sa.String(64))


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("person_id")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("trust_user_headers")
    op.drop_table("user_limits")
