"""The token of the statement that claimed a job, so that a claim retried after a lost answer knows its own rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable and without a default: PostgreSQL and SQLite add it without rewriting the table.
    op.add_column("jobs", sa.Column("claim_token", sa.Uuid()))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+): a batch copy of `jobs` would lose the triggers defined on it.
    op.drop_column("jobs", "claim_token")
