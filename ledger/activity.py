"""Operators' views of the ledger: recent failures, jobs finished per minute, and lookup by id or key."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, case, func, select

from ledger import api_keys
from ledger.queries import JOB_COLUMNS, JobView, get_job, job_view
from ledger.schema import jobs, status_in
from ledger.states import Status

#: Longest idempotency key; a longer lookup text cannot be one.
MAX_KEY_LENGTH = 255


def recent_failures(conn: Connection, *, limit: int) -> list[JobView]:
    """The last `limit` jobs to fail, newest first, read from the small index of FAILED jobs."""
    rows = conn.execute(
        select(*JOB_COLUMNS).where(status_in({Status.FAILED})).order_by(jobs.c.completed_at.desc()).limit(limit)
    ).all()
    return [job_view(row) for row in rows]


@dataclass(frozen=True)
class Minute:
    """Jobs that finished in the minute starting at `start`."""

    start: datetime
    succeeded: int
    failed: int


def throughput(conn: Connection, *, now: datetime, minutes: int) -> list[Minute]:
    """Jobs finished (SUCCESS or FAILED) in each of the last `minutes` minutes, oldest first, in one statement.

    It reads the index of completion times over that window only, so its cost follows the number of jobs
    finished in the window, not the size of the ledger.
    """
    bounds = [now - timedelta(minutes=minutes - i) for i in range(minutes + 1)]

    def count(status: Status, start: datetime, end: datetime) -> Any:
        inside = and_(status_in({status}), jobs.c.completed_at >= start, jobs.c.completed_at < end)
        return func.coalesce(func.sum(case((inside, 1), else_=0)), 0)

    windows = list(itertools.pairwise(bounds))
    row = conn.execute(
        select(
            *(count(Status.SUCCESS, start, end) for start, end in windows),
            *(count(Status.FAILED, start, end) for start, end in windows),
        ).where(jobs.c.completed_at.is_not(None), jobs.c.completed_at >= bounds[0], jobs.c.completed_at < now)
    ).one()
    return [Minute(start, int(row[i]), int(row[minutes + i])) for i, (start, _) in enumerate(windows)]


def find_jobs(conn: Connection, text: str, *, limit: int = 20) -> list[JobView]:
    """Jobs whose id is `text`, or whose idempotency key is `text` under any API key (one index probe per
    scope: the unique index leads with the scope)."""
    text = text.strip()
    found: list[JobView] = []
    try:
        job = get_job(conn, uuid.UUID(text), scope=None)
    except ValueError:
        job = None
    if job is not None:
        found.append(job)
    # Intake refuses keys with a NUL (PostgreSQL text cannot hold one), so such a text names no key.
    if text and len(text) <= MAX_KEY_LENGTH and "\x00" not in text:
        rows = conn.execute(
            select(*JOB_COLUMNS)
            .where(jobs.c.scope.in_(api_keys.scopes(conn)), jobs.c.idempotency_key == text)
            .order_by(jobs.c.created_at.desc())
            .limit(limit)
        ).all()
        found.extend(view for view in map(job_view, rows) if view.id not in {j.id for j in found})
    return found[:limit]
