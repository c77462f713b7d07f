"""Status callbacks of jobs a worker finished are armed already claimed for that worker, in the statement that
finishes the job: the worker POSTs them with no message and no claim statement of its own (bench/README.md,
2026-12-04 07:10).

A worker's own success or failure (from PROCESSING, with that attempt's outcome) arms the callback PROCESSING at
attempt 1, claimed at the job's finishing time, under a seq past every earlier one. If the worker dies before it
records the outcome, the reconciler takes the claim back once it is older than the visibility timeout
(`callback_recovery.expire`) and sends it again. Every other finish (a cancellation, the reconciler's expiry, a
deferral given up) arms it unsent as before (seq 0, or negated on a re-arm).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

FINISHES_WITH_CALLBACK = (
    "NEW.callback_url IS NOT NULL AND OLD.status <> NEW.status AND NEW.status IN ('SUCCESS', 'FAILED', 'CANCELLED')"
)
#: As 0009: the finishing worker delivers it.
FINISHED_BY_ITS_WORKER = (
    "OLD.status = 'PROCESSING' AND NEW.last_outcome IN ('success', 'transient_error', 'permanent_error')"
)
CLAIMED = f"CASE WHEN {FINISHED_BY_ITS_WORKER} THEN 1 ELSE 0 END"


def arm_callback() -> str:
    """The trigger's INSERT: claimed for the finishing worker (status PROCESSING, attempts 1, claimed_at the job's
    finishing time, seq 1 or past every earlier seq on a re-arm), else waiting unsent as before. Re-armed claimed
    while an earlier attempt is held (its worker still POSTs the previous finish's callback), it takes the attempt
    after that one: the earlier attempt's success cannot pass for it, and its finishing worker's (which records
    attempt 1) is dropped too, so the reconciler sends it once the claim expires (at least once, rare)."""
    return (
        "INSERT INTO callbacks (job_id, event, status, attempts, next_attempt_at, dispatch_seq, claimed_at, "
        "destination, created_at, updated_at) "
        f"VALUES (NEW.id, NEW.status, CASE WHEN {FINISHED_BY_ITS_WORKER} THEN 'PROCESSING' ELSE 'PENDING' END, "
        f"{CLAIMED}, NEW.updated_at, {CLAIMED}, "
        f"CASE WHEN {FINISHED_BY_ITS_WORKER} THEN NEW.updated_at END, "
        "NEW.callback_destination, NEW.updated_at, NEW.updated_at) "
        "ON CONFLICT (job_id) DO UPDATE SET event = excluded.event, status = excluded.status, "
        "attempts = CASE WHEN excluded.attempts > 0 AND callbacks.status = 'PROCESSING' "
        "THEN callbacks.attempts + 1 ELSE excluded.attempts END, "
        "next_attempt_at = excluded.next_attempt_at, dispatch_seq = CASE WHEN "
        "excluded.dispatch_seq > 0 THEN abs(callbacks.dispatch_seq) + 1 ELSE -abs(callbacks.dispatch_seq) END, "
        "claimed_at = excluded.claimed_at, destination = excluded.destination, last_error = NULL, "
        "updated_at = excluded.updated_at"
    )


def _replace(arm: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        # The trigger (0006) calls the function by name: replacing its body is enough.
        op.execute(
            f"""CREATE OR REPLACE FUNCTION wjp_arm_callback() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              {arm};
              RETURN NULL;
            END $$"""
        )
    else:
        op.execute("DROP TRIGGER jobs_arm_callback")
        op.execute(
            f"CREATE TRIGGER jobs_arm_callback AFTER UPDATE OF status ON jobs WHEN {FINISHES_WITH_CALLBACK} "
            f"BEGIN {arm}; END"
        )


def upgrade() -> None:
    _replace(arm_callback())


def downgrade() -> None:
    # 0009's: armed already dispatched (seq 1, waiting) for the finishing worker, which sends its message.
    dispatched = f"CASE WHEN {FINISHED_BY_ITS_WORKER} THEN 1 ELSE 0 END"
    _replace(
        "INSERT INTO callbacks (job_id, event, status, attempts, next_attempt_at, dispatch_seq, destination, "
        "created_at, updated_at) "
        f"VALUES (NEW.id, NEW.status, 'PENDING', 0, NEW.updated_at, {dispatched}, NEW.callback_destination, "
        "NEW.updated_at, NEW.updated_at) "
        "ON CONFLICT (job_id) DO UPDATE SET event = excluded.event, status = 'PENDING', attempts = 0, "
        "next_attempt_at = excluded.next_attempt_at, dispatch_seq = CASE WHEN excluded.dispatch_seq > 0 "
        "THEN abs(callbacks.dispatch_seq) + 1 ELSE -abs(callbacks.dispatch_seq) END, claimed_at = NULL, "
        "destination = excluded.destination, last_error = NULL, updated_at = excluded.updated_at"
    )
