"""The reconciler's statements over status callbacks (`actors.callback_reconciler`): claims whose worker vanished
taken back, and the waiting callbacks whose message is missing (never sent, lost with Redis, parked) found and
dispatched again. Each guarded on what it read, so overlapping passes take each callback once."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Connection, and_, func, or_, select, tuple_, update

from ledger.callbacks import DISPATCH_COLUMNS, dispatches_of, reports_job_status, status_in, transition_guard
from ledger.schema import callbacks
from ledger.states import WAITING, Status
from ledger.transitions import Dispatch


def expire(
    conn: Connection, *, now: datetime, cutoff: datetime, max_attempts: int, error: str, limit: int
) -> tuple[list[Dispatch], int]:
    """Take back up to `limit` claims made before `cutoff` (their worker vanished): → RETRY due now with a new
    dispatch each, or FAILED after `max_attempts`. Guarded on what was read, so overlapping passes take each once."""
    held = select(callbacks.c.job_id, callbacks.c.attempts).where(
        status_in(frozenset({Status.PROCESSING})), callbacks.c.claimed_at < cutoff
    )
    claims = [tuple(row) for row in conn.execute(held.order_by(callbacks.c.claimed_at).limit(limit)).all()]
    if not claims:
        return [], 0
    common = {"last_error": error, "claimed_at": None, "updated_at": now}
    matching = (tuple_(callbacks.c.job_id, callbacks.c.attempts).in_(claims), callbacks.c.claimed_at < cutoff)
    guard, target = transition_guard("expire_to_retry")
    retried = conn.execute(
        update(callbacks)
        .where(*matching, guard, callbacks.c.attempts < max_attempts)
        .values(status=target, next_attempt_at=now, dispatch_seq=func.abs(callbacks.c.dispatch_seq) + 1, **common)
        .returning(*DISPATCH_COLUMNS)
    ).all()
    guard, target = transition_guard("expire_to_failed")
    failed = conn.execute(
        update(callbacks).where(*matching, guard, callbacks.c.attempts >= max_attempts).values(status=target, **common)
    ).rowcount
    return dispatches_of(retried), failed


def waiting_candidates(
    conn: Connection,
    *,
    overdue_before: datetime,
    schedule_until: datetime,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None = None,
) -> list[tuple[uuid.UUID, int, datetime]]:
    """Waiting callbacks whose job is still in the status they report and that should have a message in Redis:
    sent and overdue, or without one (armed but never sent, or parked) and due before `schedule_until`.
    Keyset-paged on (next_attempt_at, job_id) from `after`."""
    overdue = and_(callbacks.c.dispatch_seq > 0, callbacks.c.next_attempt_at < overdue_before)
    unsent = and_(callbacks.c.dispatch_seq <= 0, callbacks.c.next_attempt_at <= schedule_until)
    query = select(callbacks.c.job_id, callbacks.c.dispatch_seq, callbacks.c.next_attempt_at).where(
        status_in(WAITING),
        callbacks.c.next_attempt_at <= max(overdue_before, schedule_until),
        or_(overdue, unsent),
        reports_job_status(),
    )
    if after is not None:
        query = query.where(tuple_(callbacks.c.next_attempt_at, callbacks.c.job_id) > after)
    rows = conn.execute(query.order_by(callbacks.c.next_attempt_at, callbacks.c.job_id).limit(limit)).all()
    return [(row.job_id, row.dispatch_seq, row.next_attempt_at) for row in rows]


def redispatch(conn: Connection, lost: list[tuple[uuid.UUID, int]], *, now: datetime) -> list[Dispatch]:
    """Waiting callbacks `(job_id, seq)` whose message is gone, never sent or parked → a new dispatch each, guarded
    on the seq read."""
    if not lost:
        return []
    rows = conn.execute(
        update(callbacks)
        .where(tuple_(callbacks.c.job_id, callbacks.c.dispatch_seq).in_(lost), transition_guard("claim")[0])
        .values(dispatch_seq=func.abs(callbacks.c.dispatch_seq) + 1, updated_at=now)
        .returning(*DISPATCH_COLUMNS)
    ).all()
    return dispatches_of(rows)
