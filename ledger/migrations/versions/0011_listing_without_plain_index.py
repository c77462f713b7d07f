"""The plain listing index goes: a walk with no status, channel or destination filter merges one branch per status
of `ix_jobs_listing_status` instead, and every new row and status change writes one index entry fewer. The other
listing indexes stop trying to deduplicate their entries, which, ending with the job's id, are never equal
(bench/README.md, 2026-12-04 07:08, issue 20).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


#: The listing indexes that stay; entries already deduplicated (none can be) need no rebuild.
KEPT = ("ix_jobs_listing_status", "ix_jobs_listing_channel", "ix_jobs_listing_destination")


def upgrade() -> None:
    op.drop_index("ix_jobs_listing", table_name="jobs")
    if op.get_bind().dialect.name == "postgresql":
        for name in KEPT:
            op.execute(f"ALTER INDEX {name} SET (deduplicate_items = off)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in KEPT:
            op.execute(f"ALTER INDEX {name} RESET (deduplicate_items)")
    op.create_index("ix_jobs_listing", "jobs", ["scope", "created_at", "id"])
