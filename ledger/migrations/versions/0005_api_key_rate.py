"""A rate per producer key: notifications per second it may submit (NULL: the API's default).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("rate", sa.Float()))


def downgrade() -> None:
    op.drop_column("api_keys", "rate")
