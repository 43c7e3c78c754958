"""Keys, teams and the usage ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _limits() -> list[sa.Column[object]]:
    return [
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
    ]


def upgrade() -> None:
    op.create_table(
        "teams", sa.Column("id", sa.String(64), primary_key=True), sa.Column("alias", sa.String(256)), *_limits()
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_prefix", sa.String(16), nullable=False),
        sa.Column("key_alias", sa.String(256)),
        sa.Column("user_id", sa.String(256)),
        sa.Column("team_id", sa.String(64), sa.ForeignKey("teams.id", ondelete="RESTRICT")),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        *_limits(),
    )
    op.create_index("ix_api_keys_key_alias", "api_keys", ["key_alias"])
    op.create_index("ix_api_keys_team_id", "api_keys", ["team_id"])
    op.create_table(
        "usage",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(40), nullable=False, unique=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(64)),
        sa.Column("key_alias", sa.String(256)),
        sa.Column("team_id", sa.String(64)),
        sa.Column("user_id", sa.String(256)),
        sa.Column("path", sa.String(64), nullable=False),
        sa.Column("model_requested", sa.String(256)),
        sa.Column("model_served", sa.String(256)),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float()),
    )
    op.create_index("ix_usage_time", "usage", ["time"])
    op.create_index("ix_usage_key_time", "usage", ["key_id", "time"])
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("team_id", sa.String(64)),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("usage_daily")
    op.drop_table("usage")
    op.drop_table("api_keys")
    op.drop_table("teams")
