"""Read-only views of the ledger: one job, its attempts, and the queue statistics."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, literal_column, null, select, union_all

from ledger.schema import attempts, job_counts, jobs, status_in
from ledger.states import FINISHED, WAITING, Status
from ledger.timestamps import UTCDateTime, rfc3339


@dataclass(frozen=True)
class JobView:
    id: uuid.UUID
    status: Status
    recipient: str
    channel: str
    destination: str
    idempotency_key: str
    subject: str | None
    metadata: dict[str, Any] | None
    send_at: datetime | None
    attempts: int
    max_attempts: int
    #: When the next attempt is due; None once no attempt is waiting.
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True)
class AttemptView:
    number: int
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    error: str | None
    worker: str | None


#: The columns a `JobView` is made of, in its field order.
JOB_COLUMNS = (
    jobs.c.id,
    jobs.c.status,
    jobs.c.recipient,
    jobs.c.channel,
    jobs.c.destination,
    jobs.c.idempotency_key,
    jobs.c.subject,
    jobs.c.metadata,
    jobs.c.send_at,
    jobs.c.attempts,
    jobs.c.max_attempts,
    jobs.c.next_attempt_at,
    jobs.c.last_error,
    jobs.c.created_at,
    jobs.c.updated_at,
    jobs.c.completed_at,
)


def job_view(row: Any) -> JobView:
    """A row of `JOB_COLUMNS` as a `JobView`."""
    status = Status(row.status)
    return JobView(
        id=row.id,
        status=status,
        recipient=row.recipient,
        channel=row.channel,
        destination=row.destination,
        idempotency_key=row.idempotency_key,
        subject=row.subject,
        metadata=row.metadata,
        send_at=row.send_at,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        next_attempt_at=row.next_attempt_at if status in WAITING else None,
        last_error=row.last_error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        completed_at=row.completed_at,
    )


def job_document(job: JobView) -> dict[str, Any]:
    """The job as `GET /api/notifications/{id}` shows it, and as a status callback reports it (`data`)."""
    return {
        "job_id": str(job.id),
        "status": job.status.value,
        "recipient": job.recipient,
        "channel": job.channel,
        "destination": job.destination,
        "idempotency_key": job.idempotency_key,
        "subject": job.subject,
        "metadata": job.metadata,
        "send_at": rfc3339(job.send_at),
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "next_attempt_at": rfc3339(job.next_attempt_at),
        "last_error": job.last_error,
        "created_at": rfc3339(job.created_at),
        "updated_at": rfc3339(job.updated_at),
        "completed_at": rfc3339(job.completed_at),
    }


def get_job(conn: Connection, job_id: uuid.UUID, *, scope: str | None) -> JobView | None:
    """The job `job_id` if it exists and belongs to `scope` (any scope when None: operators)."""
    row = conn.execute(
        select(*JOB_COLUMNS)
        .where(jobs.c.id == job_id)
        .where(jobs.c.scope == scope if scope is not None else jobs.c.id.is_not(None))
    ).first()
    return None if row is None else job_view(row)


def list_attempts(conn: Connection, job_id: uuid.UUID) -> list[AttemptView]:
    """Every attempt of a job, oldest first. A running attempt (no outcome yet) comes from the job row; both
    are read in one statement, so an attempt that ends meanwhile is seen in exactly one of the two places."""
    finished = select(
        attempts.c.number,
        attempts.c.started_at,
        attempts.c.finished_at,
        attempts.c.outcome,
        attempts.c.error,
        attempts.c.worker,
    ).where(attempts.c.job_id == job_id)
    running = select(
        jobs.c.attempts,
        jobs.c.claimed_at,
        null().cast(UTCDateTime()),
        null().cast(attempts.c.outcome.type),
        null().cast(attempts.c.error.type),
        jobs.c.worker,
    ).where(jobs.c.id == job_id, status_in({Status.PROCESSING}))
    rows = conn.execute(union_all(finished, running).order_by("number")).all()
    return [AttemptView(*row) for row in rows]


@dataclass(frozen=True)
class QueueStats:
    counts: dict[Status, int]
    avg_attempts_success: float
    #: Seconds the oldest due, waiting job has been due; 0 when none is.
    oldest_due_age: float


def _live_count(status: Status, index_predicate: frozenset[Status]) -> Any:
    # Repeating the partial index's own predicate lets SQLite's planner (which matches terms literally)
    # use the index too; PostgreSQL would prove it either way.
    return (
        select(func.count())
        .select_from(jobs)
        .where(status_in(index_predicate), jobs.c.status == literal_column(f"'{status.value}'"))
        .scalar_subquery()
    )


def queue_stats(conn: Connection, *, now: datetime) -> QueueStats:
    """Counts per status in one statement (one snapshot): finished statuses from the trigger-kept counters,
    live ones from their small partial indexes. Its cost does not grow with the ledger's size."""
    finished = sorted(FINISHED)
    row = conn.execute(
        select(
            _live_count(Status.PENDING, WAITING),
            _live_count(Status.RETRY, WAITING),
            _live_count(Status.PROCESSING, frozenset({Status.PROCESSING})),
            *(select(func.coalesce(func.sum(job_counts.c[s.lower()]), 0)).scalar_subquery() for s in finished),
            select(func.coalesce(func.sum(job_counts.c.success_attempts), 0)).scalar_subquery(),
            select(func.min(jobs.c.next_attempt_at))
            .where(status_in(WAITING), jobs.c.next_attempt_at <= now)
            .scalar_subquery(),
        )
    ).one()
    counts = dict(zip([Status.PENDING, Status.RETRY, Status.PROCESSING, *finished], map(int, row[:6]), strict=True))
    success, success_attempts, oldest_due = counts[Status.SUCCESS], int(row[6]), row[7]
    if isinstance(oldest_due, str):  # SQLite hands back the stored text of a MIN() in a subquery
        oldest_due = datetime.fromisoformat(oldest_due).replace(tzinfo=UTC)
    return QueueStats(
        counts={status: counts[status] for status in Status},
        avg_attempts_success=round(success_attempts / success, 4) if success else 0.0,
        oldest_due_age=max(0.0, (now - oldest_due).total_seconds()) if oldest_due else 0.0,
    )


def count_by_status(conn: Connection) -> dict[Status, int]:
    """`SELECT status, count(*)` over the whole table: slow on a big ledger, used to check the counters."""
    rows = conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status)).all()
    found = {Status(status): int(n) for status, n in rows}
    return {status: found.get(status, 0) for status in Status}


@dataclass(frozen=True)
class DispatchState:
    status: Status
    dispatch_seq: int
    next_attempt_at: datetime


def dispatch_state(conn: Connection, job_id: uuid.UUID) -> DispatchState | None:
    """What a worker needs to tell why a claim did not take: status, current dispatch and due time."""
    row = conn.execute(
        select(jobs.c.status, jobs.c.dispatch_seq, jobs.c.next_attempt_at).where(jobs.c.id == job_id)
    ).first()
    return None if row is None else DispatchState(Status(row.status), row.dispatch_seq, row.next_attempt_at)
