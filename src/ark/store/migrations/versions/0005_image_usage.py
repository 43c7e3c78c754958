"""What a ledger row made: text or images, and how many images.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # every row so far made text: the server defaults fill them (a constant default: no table rewrite on
    # PostgreSQL 11+, and SQLite adds a column in place)
    op.add_column("usage", sa.Column("kind", sa.String(16), nullable=False, server_default="text"))
    op.add_column("usage", sa.Column("images", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("images")
        batch.drop_column("kind")
