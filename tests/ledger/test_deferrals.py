"""A job's deferral on its destination and its throttling answers, in the ledger: no attempt spent, a record of
since when and why, a claim that clears it, and FAILED past the most deferral with a reason a person can read."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import Engine, event

from ledger import transitions
from ledger.states import Outcome
from tests.ledger.conftest import SECOND, T0, attempt_rows, claim, job_row, submit

DESTINATION = "webhook:hooks.example.com:443"


def defer(database, job_id, reason, *, now):
    seq = job_row(database, job_id).dispatch_seq
    database.run(lambda conn: transitions.record_deferrals(conn, [(job_id, seq, reason)], now=now))


def test_a_deferral_keeps_its_first_time_and_latest_reason_until_a_claim_clears_it(database):
    job_id = submit(database, destination=DESTINATION)

    defer(database, job_id, "limit", now=T0)
    defer(database, job_id, "circuit", now=T0 + 5 * SECOND)
    row = job_row(database, job_id)
    assert (row.deferred_since, row.deferred_reason, row.attempts) == (T0, "circuit", 0)

    claim(database, job_id, now=T0 + 6 * SECOND)
    row = job_row(database, job_id)
    assert (row.deferred_since, row.deferred_reason) == (None, None)


def test_a_job_deferred_past_the_most_deferral_fails_naming_its_destination_and_why(database):
    waited, recent = submit(database, "a", destination=DESTINATION), submit(database, "b", destination=DESTINATION)
    defer(database, waited, "circuit", now=T0)
    defer(database, recent, "throttled", now=T0 + 50 * SECOND)

    failed = database.run(lambda conn: transitions.give_up_deferred(conn, now=T0 + 61 * SECOND, max_deferral=60))

    assert failed == [waited]
    row = job_row(database, waited)
    assert (row.status, row.attempts, row.completed_at) == ("FAILED", 0, T0 + 61 * SECOND)
    assert row.last_error == f"waited more than 60 s on destination {DESTINATION}: circuit open"
    assert job_row(database, recent).status == "PENDING"


def test_a_manual_retry_of_a_job_that_waited_too_long_starts_its_deferral_afresh(database):
    job_id = submit(database, destination=DESTINATION)
    defer(database, job_id, "limit", now=T0)
    database.run(lambda conn: transitions.give_up_deferred(conn, now=T0 + 61 * SECOND, max_deferral=60))

    database.run(lambda conn: transitions.manual_retry(conn, job_id, now=T0 + 62 * SECOND, extra_attempts=1))

    assert database.run(lambda conn: transitions.give_up_deferred(conn, now=T0 + 63 * SECOND, max_deferral=60)) == []
    assert job_row(database, job_id).deferred_since is None


def test_a_far_deferral_parks_the_job_in_the_ledger_until_its_time(database):
    job_id = submit(database, destination=DESTINATION)
    due = T0 + timedelta(hours=1)

    assert database.run(
        lambda conn: transitions.park_deferred(conn, job_id, 1, now=T0, due_at=due, reason="throttled")
    )
    row = job_row(database, job_id)
    assert (row.dispatch_seq, row.next_attempt_at, row.deferred_since, row.attempts) == (-1, due, T0, 0)
    assert claim(database, job_id, now=due, seq=1) is None, "its message is no longer the job's"


def test_a_throttled_attempt_is_recorded_and_given_back_up_to_the_most_throttles(database):
    job_id = submit(database, destination=DESTINATION, max_attempts=1)
    claim(database, job_id)

    dispatch = database.run(
        lambda conn: transitions.throttle(
            conn, job_id, 1, now=T0, due_at=T0 + 30 * SECOND, error="429 Too Many Requests", max_throttles=1
        )
    )

    assert dispatch == transitions.Dispatch(job_id, 2, T0 + 30 * SECOND, DESTINATION)
    row = job_row(database, job_id)
    assert (row.status, row.attempts, row.max_attempts, row.throttles) == ("RETRY", 1, 2, 1)
    assert [(a.number, a.outcome) for a in attempt_rows(database, job_id)] == [(1, Outcome.THROTTLED.value)]

    claim(database, job_id, now=T0 + 30 * SECOND)
    again = database.run(
        lambda conn: transitions.throttle(
            conn, job_id, 2, now=T0 + 31 * SECOND, due_at=T0 + 60 * SECOND, error="429", max_throttles=1
        )
    )
    assert again is None, "past the most throttles the answer counts as a transient error"
    assert job_row(database, job_id).status == "PROCESSING"


@contextmanager
def statements_sent(database) -> Iterator[list[str]]:
    """The statements the ledger's engine sends to its driver in the block (an executemany counts once)."""
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        sent.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def test_a_batch_of_deferrals_is_recorded_in_one_statement_each_job_with_its_reason(database):
    first, second, stale = (submit(database, key, destination=DESTINATION) for key in ("a", "b", "c"))
    batch = [(first, 1, "limit"), (second, 1, "circuit"), (stale, 2, "limit")]

    with statements_sent(database) as sent:
        written = database.run(lambda conn: transitions.record_deferrals(conn, batch, now=T0))

    assert (len(sent), written) == (1, 2)
    assert [(job_row(database, job_id).deferred_since, job_row(database, job_id).deferred_reason)
            for job_id in (first, second, stale)] == [(T0, "limit"), (T0, "circuit"), (None, None)]  # fmt: skip


def test_a_deferral_already_recorded_with_the_same_reason_is_not_written_again(database):
    same, changed = submit(database, "a", destination=DESTINATION), submit(database, "b", destination=DESTINATION)
    defer(database, same, "limit", now=T0)
    defer(database, changed, "limit", now=T0)

    batch = [(same, 1, "limit"), (changed, 1, "rate")]
    written = database.run(lambda conn: transitions.record_deferrals(conn, batch, now=T0 + 5 * SECOND))

    assert written == 1, "only the job whose reason changed is written"
    assert (job_row(database, same).deferred_since, job_row(database, same).deferred_reason) == (T0, "limit")
    assert (job_row(database, changed).deferred_since, job_row(database, changed).deferred_reason) == (T0, "rate")



def test_a_worker_releases_only_the_jobs_still_on_the_dispatch_and_reason_it_recorded(database):
    stale, recorded, parked, other = (submit(database, name, destination=DESTINATION) for name in "abcd")
    seq = {job_id: job_row(database, job_id).dispatch_seq for job_id in (stale, recorded, parked, other)}
    defer(database, stale, "circuit", now=T0)
    # An operator's reset released that one: the dispatch its worker recorded is stale.
    database.run(lambda conn: transitions.release_deferred(conn, DESTINATION, ["circuit"], now=T0), transaction=True)
    defer(database, recorded, "circuit", now=T0)
    database.run(lambda conn: transitions.park_deferred(
        conn, parked, seq[parked], now=T0, due_at=T0 + 60 * SECOND, reason="circuit"))  # fmt: skip
    defer(database, other, "limit", now=T0)
    deferred = [(stale, seq[stale], "circuit"), (recorded, seq[recorded], "circuit"),
                (parked, -seq[parked], "circuit"), (other, seq[other], "circuit")]  # fmt: skip
    later = T0 + SECOND

    dispatches = database.run(lambda conn: transitions.release_deferrals(conn, deferred, now=later), transaction=True)

    assert {(d.job_id, d.seq, d.due_at) for d in dispatches} == {(recorded, seq[recorded] + 1, later),
                                                                  (parked, seq[parked] + 1, later)}  # fmt: skip
    assert job_row(database, stale).dispatch_seq == seq[stale] + 1, "released once, by the reset"
