"""Manual retries in bulk: FAILED jobs chosen by when they failed or were created, their channel, destination or
error, counted first (the dashboard shows how many a retry will touch) and then sent back to PENDING in batches."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, update

from ledger.schema import jobs
from ledger.transitions import Dispatch, retried_values, transition_guard


@dataclass(frozen=True)
class FailedJobs:
    """The FAILED jobs that failed before `failed_before` (and at or after `failed_since`), narrowed by each
    filter given. `failed_before` pins the set to what had failed when the operator asked, so a loop of batches
    ends even while other jobs keep failing."""

    failed_before: datetime
    failed_since: datetime | None = None
    channel: str | None = None
    destination: str | None = None
    #: The jobs' exact `last_error`.
    error: str | None = None
    #: created_at at or after this moment.
    created_after: datetime | None = None
    #: created_at strictly before this moment.
    created_before: datetime | None = None

    def conditions(self) -> list[Any]:
        guard, _ = transition_guard("manual_retry")
        # The guard is also the predicate of the index of FAILED jobs, which the candidates are read from.
        found = [guard, jobs.c.completed_at < self.failed_before]
        if self.failed_since is not None:
            found.append(jobs.c.completed_at >= self.failed_since)
        for column, value in (
            (jobs.c.channel, self.channel),
            (jobs.c.destination, self.destination),
            (jobs.c.last_error, self.error),
        ):
            if value is not None:
                found.append(column == value)
        if self.created_after is not None:
            found.append(jobs.c.created_at >= self.created_after)
        if self.created_before is not None:
            found.append(jobs.c.created_at < self.created_before)
        return found


def retry_failed(
    conn: Connection, chosen: FailedJobs, *, now: datetime, extra_attempts: int, limit: int
) -> list[Dispatch]:
    """A manual retry in bulk: up to `limit` of the `chosen` jobs, oldest failure first → PENDING with
    `extra_attempts` more attempts, due now, in one guarded UPDATE."""
    guard, target = transition_guard("manual_retry")
    candidates = select(jobs.c.id).where(*chosen.conditions()).order_by(jobs.c.completed_at).limit(limit)
    rows = conn.execute(
        update(jobs)
        .where(jobs.c.id.in_(candidates.scalar_subquery()), guard)
        .values(**retried_values(target, now=now, extra_attempts=extra_attempts))
        .returning(jobs.c.id, jobs.c.dispatch_seq, jobs.c.destination)
    ).all()
    return [Dispatch(row.id, row.dispatch_seq, now, row.destination) for row in rows]


def count_failed(conn: Connection, chosen: FailedJobs) -> int:
    """How many jobs `retry_failed` would take for `chosen`, were it unlimited."""
    return int(conn.execute(select(func.count()).select_from(jobs).where(*chosen.conditions())).scalar_one())
