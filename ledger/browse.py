"""The operators' listing of jobs across every producer (the dashboard's Jobs page), and FAILED jobs grouped by
destination and error (its Failures page).

The listing is keyset-paginated on (created_at, id) descending, like a producer's `GET /api/notifications`
(ledger/listing.py), but over every scope: ordered, limited branches merged, so that each branch walks an index
from the cursor down instead of sorting every match: per scope, one on the destination index with a destination
filter, else one per status and channel of the scope's jobs on the (scope, status, channel, created_at, id) index.
Scopes are few (one per API key); past `MAX_BRANCHES` one plain statement serves instead. An operator's walk is
not pinned to a snapshot: a job committed late may show on a page already passed, which a person browsing can live
with.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, literal, select, tuple_, union_all
from sqlalchemy.types import Uuid

from ledger import api_keys
from ledger.listing import Position, channels_in_scope
from ledger.queries import JOB_COLUMNS, JobView, job_view
from ledger.schema import jobs, status_in
from ledger.states import Status
from ledger.timestamps import UTCDateTime

#: Largest page.
MAX_LIMIT = 200
#: Most branches of a merged page (64 scopes with a branch per status each, as before the channel joined the status
#: index).
MAX_BRANCHES = 384


@dataclass(frozen=True)
class JobFilters:
    status: Status | None = None
    channel: str | None = None
    destination: str | None = None
    #: created_at at or after this moment.
    created_after: datetime | None = None
    #: created_at strictly before this moment.
    created_before: datetime | None = None


@dataclass(frozen=True)
class JobsPage:
    jobs: list[JobView]
    #: Where the next page starts; None on the last page.
    after: Position | None


def browse_jobs(conn: Connection, filters: JobFilters, *, limit: int, after: Position | None = None) -> JobsPage:
    """At most `limit` jobs of any producer matching `filters`, newest first, past `after` when given."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit {limit} is not within 1..{MAX_LIMIT}")
    order = (jobs.c.created_at.desc(), jobs.c.id.desc())
    base = select(*JOB_COLUMNS).where(*_conditions(filters, after)).order_by(*order)
    branches = _branches(conn, filters, api_keys.scopes(conn))
    if not branches:
        return JobsPage([], None)  # no scope has a job
    # One more than asked: whether it comes back tells whether another page follows.
    if len(branches) > MAX_BRANCHES:
        statement: Any = base.limit(limit + 1)
    else:
        # Subqueries, since SQLite takes no ORDER BY or LIMIT on the members of a UNION ALL themselves.
        members = [select(base.where(*branch).limit(limit + 1).subquery()) for branch in branches]
        merged = union_all(*members).subquery("page")
        statement = select(merged).order_by(merged.c.created_at.desc(), merged.c.id.desc()).limit(limit + 1)
    found = [job_view(row) for row in conn.execute(statement)]
    if len(found) <= limit:
        return JobsPage(found, None)
    last = found[limit - 1]
    return JobsPage(found[:limit], Position(last.created_at, last.id))


def _branches(conn: Connection, filters: JobFilters, scopes: list[str]) -> list[tuple[Any, ...]]:
    """The conditions of each branch: the scope, and unless the destination index serves it, a status and a
    channel (the status index is in (created_at, id) order only within both). Past `MAX_BRANCHES` scopes, none
    is looked for: the plain statement serves."""
    if filters.destination is not None or len(scopes) > MAX_BRANCHES:
        return [(jobs.c.scope == scope,) for scope in scopes]
    statuses = [filters.status] if filters.status is not None else sorted(Status)
    branches = []
    for scope in scopes:
        channels = [filters.channel] if filters.channel is not None else channels_in_scope(conn, scope, statuses)
        branches += [
            (jobs.c.scope == scope, jobs.c.status == status.value, jobs.c.channel == channel)
            for status in statuses
            for channel in channels
        ]
    return branches


def _conditions(filters: JobFilters, after: Position | None) -> list[Any]:
    conditions: list[Any] = []
    if filters.status is not None:
        conditions.append(jobs.c.status == filters.status.value)
    if filters.channel is not None:
        conditions.append(jobs.c.channel == filters.channel)
    if filters.destination is not None:
        conditions.append(jobs.c.destination == filters.destination)
    if filters.created_after is not None:
        conditions.append(jobs.c.created_at >= filters.created_after)
    if filters.created_before is not None:
        conditions.append(jobs.c.created_at < filters.created_before)
    if after is not None:
        conditions.append(
            tuple_(jobs.c.created_at, jobs.c.id)
            < tuple_(literal(after.created_at, UTCDateTime()), literal(after.job_id, Uuid()))
        )
    return conditions


@dataclass(frozen=True)
class FailureGroup:
    destination: str
    #: The jobs' `last_error`, the same for the whole group.
    error: str | None
    jobs: int
    last_failed_at: datetime


def failure_groups(conn: Connection, *, limit: int) -> list[FailureGroup]:
    """FAILED jobs grouped by destination and error, the largest groups first; read from the index of FAILED
    jobs, so its cost follows the number of failures, not the ledger's size."""
    count = func.count().label("jobs")
    rows = conn.execute(
        select(jobs.c.destination, jobs.c.last_error, count, func.max(jobs.c.completed_at).label("last"))
        .where(status_in({Status.FAILED}), jobs.c.completed_at.is_not(None))
        .group_by(jobs.c.destination, jobs.c.last_error)
        .order_by(count.desc(), jobs.c.destination, jobs.c.last_error)
        .limit(limit)
    ).all()
    return [FailureGroup(row.destination, row.last_error, int(row.jobs), row.last) for row in rows]
