"""The listing of jobs: an index per filter, and the transaction that created each new job (PostgreSQL).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: Each index: the scope, the filtered column (none for the plain listing), then the keyset.
INDEXES = {
    "ix_jobs_listing": [],
    "ix_jobs_listing_status": ["status"],
    "ix_jobs_listing_channel": ["channel"],
    "ix_jobs_listing_destination": ["destination"],
}


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE jobs ADD COLUMN created_xid xid8")
        # Set apart from the ADD: a default given after the column exists applies to new rows only, so the table
        # is not rewritten; the existing rows stay NULL (committed before any walk can begin).
        op.execute("ALTER TABLE jobs ALTER COLUMN created_xid SET DEFAULT pg_current_xact_id()")
    else:
        op.add_column("jobs", sa.Column("created_xid", sa.BigInteger()))
    for name, columns in INDEXES.items():
        op.create_index(name, "jobs", ["scope", *columns, "created_at", "id"])


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("created_xid")
