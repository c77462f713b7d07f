"""The listing's status and channel indexes become one, (scope, status, channel, created_at, id): a walk with a
status and a channel reads one range of it, and every other walk with no destination filter one branch per status
and channel, merged (ledger/listing.py). Every new row and every status change writes one index entry fewer
(bench/README.md, 2026-12-04, issue 20).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

#: Each index: the scope, the filtered columns, then the keyset.
MERGED = {"ix_jobs_listing_status_channel": ["status", "channel"]}
SPLIT = {"ix_jobs_listing_status": ["status"], "ix_jobs_listing_channel": ["channel"]}


def upgrade() -> None:
    _replace(SPLIT, MERGED)


def downgrade() -> None:
    _replace(MERGED, SPLIT)


def _replace(old: dict[str, list[str]], new: dict[str, list[str]]) -> None:
    """The new indexes built before the old ones go, so that the listing always has one to read."""
    for name, columns in new.items():
        # Their entries end with the job's id, never equal: no deduplication to try (migration 0011).
        keys = ["scope", *columns, "created_at", "id"]
        op.create_index(name, "jobs", keys, postgresql_with={"deduplicate_items": "off"})
    for name in old:
        op.drop_index(name, table_name="jobs")
