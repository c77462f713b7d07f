"""The ledger's read-only views on both databases: one job in its scope, its attempts, its dispatch state."""

from __future__ import annotations

import uuid

from sqlalchemy import event

from ledger import claims, queries
from ledger.states import Status
from tests.ledger.conftest import SECOND, T0, claim, job_in, submit


def test_a_job_is_visible_in_its_own_scope_and_to_operators_only(database):
    job_id = submit(database, scope="key-a", subject="Hi", metadata={"a": 1})

    mine = database.run(lambda conn: queries.get_job(conn, job_id, scope="key-a"))
    theirs = database.run(lambda conn: queries.get_job(conn, job_id, scope="key-b"))
    unscoped = database.run(lambda conn: queries.get_job(conn, job_id, scope=""))
    operator = database.run(lambda conn: queries.get_job(conn, job_id, scope=None))

    assert (theirs, unscoped) == (None, None)
    assert mine == operator
    assert (mine.status, mine.subject, mine.metadata, mine.attempts, mine.next_attempt_at) == (
        Status.PENDING,
        "Hi",
        {"a": 1},
        0,
        T0,
    )
    assert database.run(lambda conn: queries.get_job(conn, uuid.uuid4(), scope=None)) is None


def test_a_job_that_is_not_waiting_shows_no_next_attempt_time(database):
    for status in Status:
        job_id = job_in(database, status, f"k-{status}")
        view = database.run(lambda conn, job_id=job_id: queries.get_job(conn, job_id, scope=None))
        assert view.status is status
        assert (view.next_attempt_at is not None) == (status in (Status.PENDING, Status.RETRY))
        assert (view.completed_at is not None) == (status in (Status.SUCCESS, Status.FAILED, Status.CANCELLED))


def test_dispatch_state_says_why_a_message_did_not_claim(database):
    job_id = submit(database, send_at=T0 + 10 * SECOND)

    state = database.run(lambda conn: queries.dispatch_state(conn, job_id))

    assert state == queries.DispatchState(Status.PENDING, 1, T0 + 10 * SECOND)
    assert database.run(lambda conn: queries.dispatch_state(conn, uuid.uuid4())) is None


def test_the_attempts_list_never_loses_an_attempt_that_ends_while_it_is_read(database):
    # The list reads the closed attempts, then the running one from the job row. If the running attempt
    # ends between the two reads, it must still appear once (running or closed), never vanish.
    job_id = submit(database)
    claim(database, job_id, now=T0)

    def finish_after_reading_attempts(conn, cursor, statement, parameters, context, executemany):
        if "FROM attempts" in statement:
            database.run(lambda other: claims.succeed(other, job_id, 1, now=T0 + SECOND))

    def read_while_finishing(conn):
        event.listen(conn, "after_cursor_execute", finish_after_reading_attempts)
        try:
            return queries.list_attempts(conn, job_id)
        finally:
            event.remove(conn, "after_cursor_execute", finish_after_reading_attempts)

    listed = database.run(read_while_finishing)

    assert [a.number for a in listed] == [1]
