"""The reconciler's and pruner's queries: bounded batches over partial indexes."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, delete, func, or_, select, tuple_

from ledger.schema import jobs, status_in
from ledger.states import FINISHED, WAITING, Status
from ledger.timestamps import UTCDateTime, utcnow

#: However old the jobs to prune, an idempotency key is remembered at least this long.
KEY_RETENTION = timedelta(hours=24)


def database_time(conn: Connection) -> datetime:
    """The database's clock, which stamps the workers' claims (see `claims.claim_many`): the reconciler's
    cutoff must be read from it, not from a host's clock that may be skewed. SQLite runs in this process, so
    its clock is this host's."""
    if conn.dialect.name != "postgresql":
        return utcnow()
    return conn.execute(select(func.statement_timestamp(type_=UTCDateTime()))).scalar_one()


def expired_claims(conn: Connection, *, cutoff: datetime, limit: int) -> list[tuple[uuid.UUID, int]]:
    """PROCESSING jobs claimed before `cutoff`, as (id, attempt), oldest claim first."""
    rows = conn.execute(
        select(jobs.c.id, jobs.c.attempts)
        .where(status_in({Status.PROCESSING}), jobs.c.claimed_at < cutoff)
        .order_by(jobs.c.claimed_at)
        .limit(limit)
    ).all()
    return [(row.id, row.attempts) for row in rows]


def deferred_too_long(conn: Connection, *, deferred_before: datetime, limit: int) -> list[uuid.UUID]:
    """Waiting jobs deferred on their destination since before `deferred_before`, oldest first, read from the
    partial index of deferred jobs (a read, so a pass with none of them writes nothing)."""
    rows = conn.execute(
        select(jobs.c.id)
        .where(status_in(WAITING), jobs.c.deferred_since.is_not(None), jobs.c.deferred_since < deferred_before)
        .order_by(jobs.c.deferred_since)
        .limit(limit)
    ).all()
    return [row.id for row in rows]


def waiting_candidates(
    conn: Connection,
    *,
    overdue_before: datetime,
    schedule_until: datetime,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[tuple[uuid.UUID, int, datetime]]:
    """Waiting jobs that should have a message in Redis: dispatched and overdue, or without a message (never
    dispatched or parked, seq <= 0) and due before `schedule_until`. Keyset-paged on (next_attempt_at, id)
    from `after`."""
    waiting = status_in(WAITING)
    overdue = and_(jobs.c.dispatch_seq > 0, jobs.c.next_attempt_at < overdue_before)
    scheduled = and_(jobs.c.dispatch_seq <= 0, jobs.c.next_attempt_at <= schedule_until)
    query = select(jobs.c.id, jobs.c.dispatch_seq, jobs.c.next_attempt_at).where(
        waiting, jobs.c.next_attempt_at <= max(overdue_before, schedule_until), or_(overdue, scheduled)
    )
    if after is not None:
        query = query.where(tuple_(jobs.c.next_attempt_at, jobs.c.id) > after)
    rows = conn.execute(query.order_by(jobs.c.next_attempt_at, jobs.c.id).limit(limit)).all()
    return [(row.id, row.dispatch_seq, row.next_attempt_at) for row in rows]


def prune(conn: Connection, *, finished_before: datetime, now: datetime, limit: int) -> int:
    """Delete up to `limit` finished jobs (and, by cascade, their attempts) finished before the cutoff."""
    prunable = (
        status_in(FINISHED),
        jobs.c.completed_at.is_not(None),
        jobs.c.completed_at < finished_before,
        jobs.c.created_at < now - KEY_RETENTION,
    )
    victims = select(jobs.c.id).where(*prunable).limit(limit).scalar_subquery()
    # The guard is repeated on the DELETE itself: PostgreSQL re-checks only the outer condition of a row that
    # changed while we waited for its lock, and a manual retry may just have brought it back to PENDING.
    return conn.execute(delete(jobs).where(jobs.c.id.in_(victims), *prunable)).rowcount
