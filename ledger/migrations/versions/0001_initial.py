"""Initial ledger: jobs, attempts, status counters, API keys, and the triggers that keep them in step.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ledger.timestamps import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUSES = ("PENDING", "PROCESSING", "RETRY", "SUCCESS", "FAILED", "CANCELLED")
SLOTS = 32


def _counter_update(slot: str, *changes: tuple[str, str]) -> str:
    """An UPDATE of one counter slot applying each (sign, row) change: `+ NEW` counts a row in, `- OLD` out."""

    def when(row: str, status: str, then: str) -> str:
        return f"CASE WHEN {row}.status = '{status}' THEN {then} ELSE 0 END"

    sets = [
        f"{s.lower()} = {s.lower()} " + " ".join(f"{sign} {when(row, s, '1')}" for sign, row in changes)
        for s in STATUSES
    ]
    sets.append(
        "success_attempts = success_attempts "
        + " ".join(f"{sign} {when(row, 'SUCCESS', f'{row}.attempts')}" for sign, row in changes)
    )
    return f"UPDATE job_counts SET {', '.join(sets)} WHERE slot = {slot}"


OPEN_ATTEMPT = (
    "INSERT INTO attempts (job_id, number, started_at, worker) "
    "VALUES (NEW.id, NEW.attempts, NEW.claimed_at, NEW.worker)"
)
CLOSE_ATTEMPT = (
    "UPDATE attempts SET finished_at = NEW.updated_at, outcome = NEW.last_outcome, error = NEW.last_error "
    "WHERE job_id = NEW.id AND number = OLD.attempts"
)


def _postgresql_triggers() -> list[str]:
    slot = f"(txid_current() % {SLOTS})::integer"
    return [
        f"""
        CREATE FUNCTION wjp_count_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP = 'INSERT' THEN
            {_counter_update(slot, ("+", "NEW"))};
          ELSIF TG_OP = 'DELETE' THEN
            {_counter_update(slot, ("-", "OLD"))};
          ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
            {_counter_update(slot, ("+", "NEW"), ("-", "OLD"))};
          END IF;
          RETURN NULL;
        END $$""",
        """
        CREATE TRIGGER jobs_count AFTER INSERT OR DELETE OR UPDATE OF status ON jobs
        FOR EACH ROW EXECUTE FUNCTION wjp_count_jobs()""",
        f"""
        CREATE FUNCTION wjp_track_attempts() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.status = 'PROCESSING' AND OLD.status <> 'PROCESSING' THEN
            {OPEN_ATTEMPT};
          ELSIF OLD.status = 'PROCESSING' AND NEW.status <> 'PROCESSING' THEN
            {CLOSE_ATTEMPT};
          END IF;
          RETURN NULL;
        END $$""",
        """
        CREATE TRIGGER jobs_attempts AFTER UPDATE OF status ON jobs
        FOR EACH ROW EXECUTE FUNCTION wjp_track_attempts()""",
    ]


def _sqlite_triggers() -> list[str]:
    # SQLite has one writer at a time, so a single counter slot never contends.
    return [
        f"CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN {_counter_update('0', ('+', 'NEW'))}; END",
        f"CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN {_counter_update('0', ('-', 'OLD'))}; END",
        "CREATE TRIGGER jobs_count_update AFTER UPDATE OF status ON jobs WHEN NEW.status <> OLD.status "
        f"BEGIN {_counter_update('0', ('+', 'NEW'), ('-', 'OLD'))}; END",
        "CREATE TRIGGER jobs_attempt_open AFTER UPDATE OF status ON jobs "
        f"WHEN NEW.status = 'PROCESSING' AND OLD.status <> 'PROCESSING' BEGIN {OPEN_ATTEMPT}; END",
        "CREATE TRIGGER jobs_attempt_close AFTER UPDATE OF status ON jobs "
        f"WHEN OLD.status = 'PROCESSING' AND NEW.status <> 'PROCESSING' BEGIN {CLOSE_ATTEMPT}; END",
    ]


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("scope", sa.String(64), nullable=False, server_default=""),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("payload_hash", sa.String(64), nullable=False),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("subject", sa.String(255)),
        sa.Column("metadata", sa.JSON()),
        sa.Column("send_at", UTCDateTime()),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("dispatch_seq", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("claimed_at", UTCDateTime()),
        sa.Column("worker", sa.String(200)),
        sa.Column("last_outcome", sa.String(20)),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("completed_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.UniqueConstraint("scope", "idempotency_key", name="uq_jobs_scope_idempotency_key"),
    )
    for name, column, where in (
        ("ix_jobs_processing_claimed_at", "claimed_at", "status = 'PROCESSING'"),
        ("ix_jobs_waiting_next_attempt_at", "next_attempt_at", "status IN ('PENDING', 'RETRY')"),
        ("ix_jobs_finished_completed_at", "completed_at", "completed_at IS NOT NULL"),
    ):
        op.create_index(name, "jobs", [column], postgresql_where=sa.text(where), sqlite_where=sa.text(where))
    op.create_table(
        "attempts",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime()),
        sa.Column("outcome", sa.String(20)),
        sa.Column("error", sa.Text()),
        sa.Column("worker", sa.String(200)),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_attempts_job_id_jobs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "number", name="pk_attempts"),
    )
    counters = op.create_table(
        "job_counts",
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        *(sa.Column(s.lower(), sa.BigInteger(), nullable=False, server_default="0") for s in STATUSES),
        sa.Column("success_attempts", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("slot", name="pk_job_counts"),
    )
    op.bulk_insert(counters, [{"slot": slot} for slot in range(SLOTS)])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("name", name="uq_api_keys_name"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    dialect = op.get_bind().dialect.name
    for statement in _postgresql_triggers() if dialect == "postgresql" else _sqlite_triggers():
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS jobs_attempts ON jobs")
        op.execute("DROP TRIGGER IF EXISTS jobs_count ON jobs")
        op.execute("DROP FUNCTION IF EXISTS wjp_track_attempts()")
        op.execute("DROP FUNCTION IF EXISTS wjp_count_jobs()")
    op.drop_table("api_keys")
    op.drop_table("job_counts")
    op.drop_table("attempts")
    op.drop_table("jobs")
