"""A partial index of FAILED jobs by completion time, for recent failures and bulk retries.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

WHERE = "status = 'FAILED'"


def upgrade() -> None:
    op.create_index(
        "ix_jobs_failed_completed_at",
        "jobs",
        ["completed_at"],
        postgresql_where=sa.text(WHERE),
        sqlite_where=sa.text(WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_failed_completed_at", table_name="jobs")
