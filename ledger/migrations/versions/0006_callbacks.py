"""Status callbacks: a job's `callback_url`, one callback row per job, and the trigger that arms it when the job
finishes, in the transaction that finishes it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ledger.timestamps import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

WAITING = "status IN ('PENDING', 'RETRY')"
PROCESSING = "status = 'PROCESSING'"

# Whatever statement finishes a job (a worker's success or failure, a cancellation, the reconciler's expiry, a
# deferral given up), its callback is armed with it: nothing between the two can be lost. A row left from an earlier
# finish is re-armed for the new status; its seq is negated so that none of its old messages can claim it.
FINISHES_WITH_CALLBACK = (
    "NEW.callback_url IS NOT NULL AND OLD.status <> NEW.status AND NEW.status IN ('SUCCESS', 'FAILED', 'CANCELLED')"
)
ARM_CALLBACK = (
    "INSERT INTO callbacks (job_id, event, status, attempts, next_attempt_at, dispatch_seq, destination, "
    "created_at, updated_at) "
    "VALUES (NEW.id, NEW.status, 'PENDING', 0, NEW.updated_at, 0, NEW.callback_destination, NEW.updated_at, "
    "NEW.updated_at) "
    "ON CONFLICT (job_id) DO UPDATE SET event = excluded.event, status = 'PENDING', attempts = 0, "
    "next_attempt_at = excluded.next_attempt_at, dispatch_seq = -abs(callbacks.dispatch_seq), claimed_at = NULL, "
    "destination = excluded.destination, last_error = NULL, updated_at = excluded.updated_at"
)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("callback_url", sa.Text()))
    op.add_column("jobs", sa.Column("callback_destination", sa.String(300)))
    op.create_table(
        "callbacks",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("dispatch_seq", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("claimed_at", UTCDateTime()),
        sa.Column("destination", sa.String(300), nullable=False),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_callbacks_job_id_jobs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", name="pk_callbacks"),
    )
    for name, column, where in (
        ("ix_callbacks_waiting_next_attempt_at", "next_attempt_at", WAITING),
        ("ix_callbacks_processing_claimed_at", "claimed_at", PROCESSING),
    ):
        op.create_index(name, "callbacks", [column], postgresql_where=sa.text(where), sqlite_where=sa.text(where))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""CREATE FUNCTION wjp_arm_callback() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              {ARM_CALLBACK};
              RETURN NULL;
            END $$"""
        )
        op.execute(
            f"""CREATE TRIGGER jobs_arm_callback AFTER UPDATE OF status ON jobs FOR EACH ROW
            WHEN ({FINISHES_WITH_CALLBACK}) EXECUTE FUNCTION wjp_arm_callback()"""
        )
    else:
        op.execute(
            f"CREATE TRIGGER jobs_arm_callback AFTER UPDATE OF status ON jobs WHEN {FINISHES_WITH_CALLBACK} "
            f"BEGIN {ARM_CALLBACK}; END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS jobs_arm_callback ON jobs")
        op.execute("DROP FUNCTION IF EXISTS wjp_arm_callback()")
    else:
        op.execute("DROP TRIGGER IF EXISTS jobs_arm_callback")
    op.drop_table("callbacks")
    # Plain DROP COLUMNs (SQLite 3.35+): a batch copy of `jobs` would lose the triggers defined on it.
    for name in ("callback_destination", "callback_url"):
        op.drop_column("jobs", name)
