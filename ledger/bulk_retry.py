"""Manual retries in bulk: FAILED jobs chosen by when they failed, their channel, destination or error, counted
first (the dashboard shows how many a retry will touch) and then sent back to PENDING in batches."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, update

from ledger.schema import jobs
from ledger.transitions import Dispatch, transition_guard


def retry_failed(
    conn: Connection,
    *,
    now: datetime,
    extra_attempts: int,
    failed_before: datetime,
    failed_since: datetime | None = None,
    channel: str | None = None,
    destination: str | None = None,
    error: str | None = None,
    limit: int,
) -> list[Dispatch]:
    """A manual retry in bulk: up to `limit` jobs that became FAILED in [`failed_since`, `failed_before`) (on
    `channel`, to `destination`, with exactly `error` as `last_error`, when given) → PENDING with
    `extra_attempts` more attempts, due now, in one guarded UPDATE.

    `failed_before` pins the set to what had failed when the operator asked, so a loop of batches ends
    even while other jobs keep failing.
    """
    guard, target = transition_guard("manual_retry")
    candidates = select(jobs.c.id).where(*_failed(failed_before, failed_since, channel, destination, error))
    rows = conn.execute(
        update(jobs)
        .where(jobs.c.id.in_(candidates.order_by(jobs.c.completed_at).limit(limit).scalar_subquery()), guard)
        .values(
            status=target,
            max_attempts=jobs.c.attempts + extra_attempts,
            next_attempt_at=now,
            dispatch_seq=jobs.c.dispatch_seq + 1,
            updated_at=now,
            completed_at=None,
            # A job that failed waiting on its destination starts its deferral afresh.
            deferred_since=None,
            deferred_reason=None,
        )
        .returning(jobs.c.id, jobs.c.dispatch_seq, jobs.c.destination)
    ).all()
    return [Dispatch(row.id, row.dispatch_seq, now, row.destination) for row in rows]


def count_failed(
    conn: Connection,
    *,
    failed_before: datetime,
    channel: str | None = None,
    destination: str | None = None,
    error: str | None = None,
) -> int:
    """How many jobs `retry_failed` would take with these filters, were it unlimited."""
    conditions = _failed(failed_before, None, channel, destination, error)
    return int(conn.execute(select(func.count()).select_from(jobs).where(*conditions)).scalar_one())


def _failed(
    before: datetime, since: datetime | None, channel: str | None, destination: str | None, error: str | None
) -> list[Any]:
    guard, _ = transition_guard("manual_retry")
    # The guard is also the predicate of the index of FAILED jobs, which the candidates are read from.
    found = [guard, jobs.c.completed_at < before]
    if since is not None:
        found.append(jobs.c.completed_at >= since)
    for column, value in ((jobs.c.channel, channel), (jobs.c.destination, destination), (jobs.c.last_error, error)):
        if value is not None:
            found.append(column == value)
    return found
