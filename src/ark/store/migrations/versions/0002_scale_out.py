"""Scale-out: gateways sharing one database hold allotments of budgets (table ``holds``) and shared rate buckets.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateways",
        sa.Column("holder", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("heartbeat", sa.Float(), nullable=False),
    )
    op.create_table(
        "holds",
        sa.Column("holder", sa.String(64), primary_key=True),
        sa.Column("subject", sa.String(80), primary_key=True),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
    )
    op.create_index("ix_holds_subject", "holds", ["subject"])
    op.create_table(
        "rate_buckets",
        sa.Column("subject", sa.String(80), primary_key=True),
        sa.Column("requests", sa.Float(), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("stamp", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rate_buckets")
    op.drop_index("ix_holds_subject", "holds")
    op.drop_table("holds")
    op.drop_table("gateways")
