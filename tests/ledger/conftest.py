"""Helpers for the ledger's tests: a fixed clock, intake of a notification, and jobs brought into each status."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from ledger import claims, intake, queries, transitions
from ledger.database import Database
from ledger.intake import NewNotification
from ledger.schema import attempts, jobs
from ledger.schema import callbacks as callbacks_table
from ledger.states import Outcome, Status
from tests.pg_cluster import private_cluster, private_ledger  # noqa: F401 (fixtures offered here)

#: The injected clock's origin; every test states its times relative to it.
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
WORKER = "host:1:thread-1"


def notification(key: str = "key-1", **fields: Any) -> NewNotification:
    values: dict[str, Any] = {
        "idempotency_key": key,
        "recipient": "user@example.com",
        "channel": "email",
        "message": "Halo dari sistem worker!",
        "max_attempts": 3,
    }
    values.update(fields)
    return NewNotification(**values)


def submit(database: Database, key: str = "key-1", *, now: datetime = T0, dispatch_now: bool = True, **fields: Any):
    """Record a new notification; returns its id."""
    result = database.run(
        lambda conn: intake.accept(conn, notification(key, **fields), now=now, dispatch_now=dispatch_now)
    )
    assert result.outcome is intake.Intake.CREATED
    return result.job_id


def job_row(database: Database, job_id: uuid.UUID) -> Any:
    """Every column of the job's row, or None."""
    return database.run(lambda conn: conn.execute(select(jobs).where(jobs.c.id == job_id)).first())


def attempt_rows(database: Database, job_id: uuid.UUID) -> list[Any]:
    """The recorded (finished) attempts of a job, straight from the table, oldest first."""
    return database.run(
        lambda conn: conn.execute(select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.number)).all()
    )


def history(database: Database, job_id: uuid.UUID) -> list[queries.AttemptView]:
    return database.run(lambda conn: queries.list_attempts(conn, job_id))


def claim(database: Database, job_id: uuid.UUID, *, now: datetime = T0, seq: int | None = None, worker: str = WORKER):
    """Claim the job's current dispatch (or `seq`)."""
    if seq is None:
        seq = job_row(database, job_id).dispatch_seq
    return database.run(lambda conn: claims.claim(conn, job_id, seq, now=now, worker=worker))


def job_in(database: Database, status: Status, key: str, *, now: datetime = T0, max_attempts: int = 3) -> uuid.UUID:
    """A job brought into `status` through the ledger's own transitions, all at `now`."""
    job_id = submit(database, key, now=now, max_attempts=max_attempts)
    if status is Status.PENDING:
        return job_id
    if status is Status.CANCELLED:
        assert database.run(lambda conn: transitions.cancel(conn, job_id, scope="", now=now))
        return job_id
    assert claim(database, job_id, now=now) is not None
    if status is Status.PROCESSING:
        return job_id
    if status is Status.SUCCESS:
        assert database.run(lambda conn: claims.succeed(conn, job_id, 1, now=now))
    elif status is Status.FAILED:
        assert database.run(
            lambda conn: transitions.fail(conn, job_id, 1, now=now, outcome=Outcome.PERMANENT_ERROR, error="no")
        )
    elif status is Status.RETRY:
        assert database.run(
            lambda conn: transitions.schedule_retry(conn, job_id, 1, now=now, due_at=now, error="try again")
        )
    return job_id


def armed_as_before_0010(database: Database, job_id: uuid.UUID) -> None:
    """The callback as migration 0009 armed it for its finishing worker, which then sent a message naming it."""
    database.run(
        lambda conn: conn.execute(
            callbacks_table.update().where(callbacks_table.c.job_id == job_id)
            .values(status="PENDING", attempts=0, dispatch_seq=1, claimed_at=None)
        )
    )  # fmt: skip
