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

#: Statuses counted by the triggers. Jobs in the others are few (they are the live work) and are counted
#: from their partial indexes at query time, so intake and claims never touch a counter.
COUNTED = ("SUCCESS", "FAILED", "CANCELLED")
IS_COUNTED = "IN ('SUCCESS', 'FAILED', 'CANCELLED')"
SLOTS = 32


def _counter_update(slot: str, *changes: tuple[str, str]) -> str:
    """An UPDATE of one counter slot applying each (sign, row) change: `+ NEW` counts a row in, `- OLD` out."""

    def when(row: str, status: str, then: str) -> str:
        return f"CASE WHEN {row}.status = '{status}' THEN {then} ELSE 0 END"

    sets = [
        f"{s.lower()} = {s.lower()} " + " ".join(f"{sign} {when(row, s, '1')}" for sign, row in changes)
        for s in COUNTED
    ]
    sets.append(
        "success_attempts = success_attempts "
        + " ".join(f"{sign} {when(row, 'SUCCESS', f'{row}.attempts')}" for sign, row in changes)
    )
    return f"UPDATE job_counts SET {', '.join(sets)} WHERE slot = {slot}"


# An attempt is recorded once, when it ends; while it runs, the job row itself says who holds it since when.
CLOSE_ATTEMPT = (
    "INSERT INTO attempts (job_id, number, started_at, finished_at, outcome, error, worker) "
    "VALUES (NEW.id, OLD.attempts, OLD.claimed_at, NEW.updated_at, NEW.last_outcome, NEW.last_error, OLD.worker)"
)
LEAVES_PROCESSING = "OLD.status = 'PROCESSING' AND NEW.status <> 'PROCESSING'"
CHANGES_COUNT = f"OLD.status <> NEW.status AND (OLD.status {IS_COUNTED} OR NEW.status {IS_COUNTED})"


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
          ELSE
            {_counter_update(slot, ("+", "NEW"), ("-", "OLD"))};
          END IF;
          RETURN NULL;
        END $$""",
        f"""CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs FOR EACH ROW
        WHEN (NEW.status {IS_COUNTED}) EXECUTE FUNCTION wjp_count_jobs()""",
        f"""CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs FOR EACH ROW
        WHEN (OLD.status {IS_COUNTED}) EXECUTE FUNCTION wjp_count_jobs()""",
        f"""CREATE TRIGGER jobs_count_update AFTER UPDATE OF status ON jobs FOR EACH ROW
        WHEN ({CHANGES_COUNT}) EXECUTE FUNCTION wjp_count_jobs()""",
        f"""
        CREATE FUNCTION wjp_close_attempt() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          {CLOSE_ATTEMPT};
          RETURN NULL;
        END $$""",
        f"""CREATE TRIGGER jobs_attempts AFTER UPDATE OF status ON jobs FOR EACH ROW
        WHEN ({LEAVES_PROCESSING}) EXECUTE FUNCTION wjp_close_attempt()""",
    ]


def _sqlite_triggers() -> list[str]:
    # SQLite has one writer at a time, so a single counter slot never contends.
    return [
        f"CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs WHEN NEW.status {IS_COUNTED} "
        f"BEGIN {_counter_update('0', ('+', 'NEW'))}; END",
        f"CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs WHEN OLD.status {IS_COUNTED} "
        f"BEGIN {_counter_update('0', ('-', 'OLD'))}; END",
        f"CREATE TRIGGER jobs_count_update AFTER UPDATE OF status ON jobs WHEN {CHANGES_COUNT} "
        f"BEGIN {_counter_update('0', ('+', 'NEW'), ('-', 'OLD'))}; END",
        f"CREATE TRIGGER jobs_attempt_close AFTER UPDATE OF status ON jobs WHEN {LEAVES_PROCESSING} "
        f"BEGIN {CLOSE_ATTEMPT}; END",
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
    # The waiting index also holds the status, so counting PENDING and RETRY reads the index alone.
    for name, columns, where in (
        ("ix_jobs_processing_claimed_at", ["claimed_at"], "status = 'PROCESSING'"),
        ("ix_jobs_waiting_next_attempt_at", ["next_attempt_at", "status"], "status IN ('PENDING', 'RETRY')"),
        ("ix_jobs_finished_completed_at", ["completed_at"], "completed_at IS NOT NULL"),
    ):
        op.create_index(name, "jobs", columns, postgresql_where=sa.text(where), sqlite_where=sa.text(where))
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
        *(sa.Column(s.lower(), sa.BigInteger(), nullable=False, server_default="0") for s in COUNTED),
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
        for trigger in ("jobs_attempts", "jobs_count_insert", "jobs_count_delete", "jobs_count_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON jobs")
        op.execute("DROP FUNCTION IF EXISTS wjp_close_attempt()")
        op.execute("DROP FUNCTION IF EXISTS wjp_count_jobs()")
    op.drop_table("api_keys")
    op.drop_table("job_counts")
    op.drop_table("attempts")
    op.drop_table("jobs")
