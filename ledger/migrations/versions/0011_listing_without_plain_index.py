"""The plain listing index goes: a walk with no status, channel or destination filter merges one branch per status
of `ix_jobs_listing_status` instead, and every new row and status change writes one index entry fewer
(bench/README.md, 2026-12-04 "batch intake: one index entry fewer per row").

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_jobs_listing", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_listing", "jobs", ["scope", "created_at", "id"])
