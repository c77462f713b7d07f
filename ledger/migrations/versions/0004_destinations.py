"""Destinations: the party each job is delivered to, operators' limits per destination, and a job's deferral.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ledger.timestamps import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

WAITING = "status IN ('PENDING', 'RETRY')"
DEFERRED = "deferred_since IS NOT NULL AND status IN ('PENDING', 'RETRY')"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("destination", sa.String(300), nullable=False, server_default=""))
    # Jobs recorded before destinations existed: their channel is the nearest thing to one (the relay or host a
    # job of theirs reaches is set by the API's settings, which a migration does not know).
    op.execute("UPDATE jobs SET destination = channel WHERE destination = ''")
    op.add_column("jobs", sa.Column("deferred_since", UTCDateTime()))
    op.add_column("jobs", sa.Column("deferred_reason", sa.String(20)))
    op.add_column("jobs", sa.Column("throttles", sa.Integer(), nullable=False, server_default="0"))
    for name, columns, where in (
        ("ix_jobs_waiting_destination", ["destination", "next_attempt_at"], WAITING),
        ("ix_jobs_deferred_since", ["deferred_since"], DEFERRED),
    ):
        op.create_index(name, "jobs", columns, postgresql_where=sa.text(where), sqlite_where=sa.text(where))
    op.create_table(
        "destinations",
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("concurrency", sa.Integer()),
        sa.Column("rate", sa.Float()),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_destinations"),
    )


def downgrade() -> None:
    op.drop_table("destinations")
    op.drop_index("ix_jobs_deferred_since", table_name="jobs")
    op.drop_index("ix_jobs_waiting_destination", table_name="jobs")
    # Plain DROP COLUMNs (SQLite 3.35+): a batch copy of `jobs` would lose the triggers defined on it.
    for name in ("throttles", "deferred_reason", "deferred_since", "destination"):
        op.drop_column("jobs", name)
