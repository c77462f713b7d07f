"""The ledger's transitions as one call each on a `Database`, with the defaults the transition tests share."""

from __future__ import annotations

from datetime import timedelta

from ledger import claims, transitions
from ledger.states import Outcome
from tests.ledger.conftest import SECOND, T0

VISIBILITY = timedelta(seconds=60)
TIMEOUT_ERROR = "visibility timeout exceeded"


def succeed(database, job_id, attempt, *, now=T0):
    return database.run(lambda conn: claims.succeed(conn, job_id, attempt, now=now))


def fail(database, job_id, attempt, *, now=T0, outcome=Outcome.PERMANENT_ERROR, error="550 no such user"):
    return database.run(lambda conn: transitions.fail(conn, job_id, attempt, now=now, outcome=outcome, error=error))


def schedule_retry(database, job_id, attempt, *, now=T0, due_at=None, error="503 try later"):
    due_at = now + 2 * SECOND if due_at is None else due_at
    return database.run(
        lambda conn: transitions.schedule_retry(conn, job_id, attempt, now=now, due_at=due_at, error=error)
    )


def cancel(database, job_id, *, now=T0, scope=""):
    return database.run(lambda conn: transitions.cancel(conn, job_id, scope=scope, now=now))


def manual_retry(database, job_id, *, now=T0, extra=3):
    return database.run(lambda conn: transitions.manual_retry(conn, job_id, now=now, extra_attempts=extra))


def expire(database, claims, *, now, cutoff=None, error=TIMEOUT_ERROR):
    cutoff = now - VISIBILITY if cutoff is None else cutoff
    return database.run(lambda conn: transitions.expire(conn, claims, now=now, cutoff=cutoff, error=error))


def redispatch(database, lost, *, now=T0):
    return database.run(lambda conn: transitions.redispatch(conn, lost, now=now))
