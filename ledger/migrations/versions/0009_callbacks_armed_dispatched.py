"""Status callbacks of jobs a worker finished are armed already dispatched: that worker sends their message with no
statement of its own, so the row is written once fewer (bench/README.md, 2026-12-03 20:10).

A worker's own success or failure (from PROCESSING, with that attempt's outcome) arms the callback with a positive
seq; the worker sends a message naming that armed dispatch (`ledger.callbacks.ARMED_SEQ`). If it died first, a
reconciler pass finds no message for the dispatch and sends one. Every other finish (a cancellation, the
reconciler's expiry, a deferral given up) arms it unsent as before (seq 0, or negated on a re-arm), for whoever
finished it or a reconciler pass to send.

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None

FINISHES_WITH_CALLBACK = (
    "NEW.callback_url IS NOT NULL AND OLD.status <> NEW.status AND NEW.status IN ('SUCCESS', 'FAILED', 'CANCELLED')"
)
#: The finishing worker sends it: its attempt ended in one of these outcomes (the reconciler's expiry says
#: 'timed_out'; a deferral given up or a cancellation do not start from PROCESSING).
FINISHED_BY_ITS_WORKER = (
    "OLD.status = 'PROCESSING' AND NEW.last_outcome IN ('success', 'transient_error', 'permanent_error')"
)


def arm_callback(sent_by_worker: str) -> str:
    """The trigger's INSERT: a fresh row's seq is 1 when `sent_by_worker` holds (else 0, unsent); a re-armed row's
    goes past every seq it had (else is negated), so none of its old messages can claim it."""
    return (
        "INSERT INTO callbacks (job_id, event, status, attempts, next_attempt_at, dispatch_seq, destination, "
        "created_at, updated_at) "
        f"VALUES (NEW.id, NEW.status, 'PENDING', 0, NEW.updated_at, CASE WHEN {sent_by_worker} THEN 1 ELSE 0 END, "
        "NEW.callback_destination, NEW.updated_at, NEW.updated_at) "
        "ON CONFLICT (job_id) DO UPDATE SET event = excluded.event, status = 'PENDING', attempts = 0, "
        "next_attempt_at = excluded.next_attempt_at, dispatch_seq = CASE WHEN excluded.dispatch_seq > 0 "
        "THEN abs(callbacks.dispatch_seq) + 1 ELSE -abs(callbacks.dispatch_seq) END, claimed_at = NULL, "
        "destination = excluded.destination, last_error = NULL, updated_at = excluded.updated_at"
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
    _replace(arm_callback(FINISHED_BY_ITS_WORKER))


def downgrade() -> None:
    # 0006's: every finish arms it unsent.
    _replace(arm_callback("FALSE"))
