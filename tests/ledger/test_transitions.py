"""Every state change of a job on both databases: one guarded UPDATE each, fenced on the dispatch and the attempt."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from dataclasses import astuple
from datetime import timedelta
from typing import Any

import pytest

from ledger import claims, maintenance, transitions
from ledger.claims import EARLY_CLAIM_TOLERANCE
from ledger.states import FINISHED, TRANSITIONS, WAITING, Outcome, Status, allowed
from ledger.transitions import Dispatch
from tests.ledger.conftest import SECOND, T0, WORKER, attempt_rows, claim, history, job_in, job_row, submit

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


# --- claim -------------------------------------------------------------------------------------------------


def test_a_due_pending_job_is_claimed_for_its_first_attempt(database):
    job_id = submit(database, subject="Hi", metadata={"a": 1}, max_attempts=4)

    claimed = claim(database, job_id, now=T0 + SECOND, seq=1, worker="w:1:t")

    assert claimed == claims.ClaimedJob(
        id=job_id,
        recipient="user@example.com",
        channel="email",
        message="Halo dari sistem worker!",
        subject="Hi",
        metadata={"a": 1},
        attempt=1,
        max_attempts=4,
    )
    row = job_row(database, job_id)
    assert (row.status, row.attempts, row.claimed_at, row.worker, row.updated_at) == (
        "PROCESSING",
        1,
        T0 + SECOND,
        "w:1:t",
        T0 + SECOND,
    )
    assert row.dispatch_seq == 1


def test_a_claim_opens_an_attempt_with_its_number_start_and_worker(database):
    job_id = submit(database)

    claim(database, job_id, now=T0 + SECOND, worker="w:1:t")

    [running] = history(database, job_id)
    assert (running.number, running.started_at, running.worker) == (1, T0 + SECOND, "w:1:t")
    assert (running.finished_at, running.outcome, running.error) == (None, None, None)
    # The table records an attempt when it ends; while it runs, the job row is the attempt.
    assert attempt_rows(database, job_id) == []


def test_a_due_retry_job_is_claimed_for_its_next_attempt(database):
    job_id = submit(database)
    claim(database, job_id)
    dispatch = schedule_retry(database, job_id, 1, due_at=T0 + 4 * SECOND)

    claimed = claim(database, job_id, now=T0 + 4 * SECOND, seq=dispatch.seq, worker="w:2:t")

    assert claimed is not None and claimed.attempt == 2
    row = job_row(database, job_id)
    assert (row.status, row.attempts, row.claimed_at, row.worker) == ("PROCESSING", 2, T0 + 4 * SECOND, "w:2:t")
    assert [(a.number, a.outcome) for a in history(database, job_id)] == [(1, "transient_error"), (2, None)]


@pytest.mark.parametrize("status", [Status.PROCESSING, Status.SUCCESS, Status.FAILED, Status.CANCELLED])
def test_only_pending_and_retry_jobs_can_be_claimed(database, status):
    job_id = job_in(database, status, "k")
    before = job_row(database, job_id)

    assert claim(database, job_id, now=T0 + SECOND, seq=before.dispatch_seq) is None
    assert job_row(database, job_id) == before


def test_a_job_is_claimed_up_to_the_early_tolerance_before_its_due_time_and_not_earlier(database):
    due = T0 + timedelta(minutes=5)
    job_id = submit(database, send_at=due)

    assert timedelta(milliseconds=500) == EARLY_CLAIM_TOLERANCE
    too_early = due - EARLY_CLAIM_TOLERANCE - timedelta(microseconds=1)
    assert claim(database, job_id, now=too_early) is None
    assert job_row(database, job_id).status == "PENDING"
    assert claim(database, job_id, now=due - EARLY_CLAIM_TOLERANCE) is not None


def test_a_retry_is_not_claimed_before_its_backoff_has_elapsed(database):
    job_id = submit(database)
    claim(database, job_id)
    dispatch = schedule_retry(database, job_id, 1, due_at=T0 + 8 * SECOND)

    assert claim(database, job_id, now=T0 + 7 * SECOND, seq=dispatch.seq) is None
    assert claim(database, job_id, now=T0 + 8 * SECOND, seq=dispatch.seq) is not None


@pytest.mark.parametrize("seq", [0, 2, 7])
def test_a_message_of_another_dispatch_does_not_claim(database, seq):
    job_id = submit(database)

    assert claim(database, job_id, seq=seq) is None
    assert job_row(database, job_id).status == "PENDING"
    assert claim(database, job_id, seq=1) is not None


def test_the_message_of_the_previous_dispatch_does_not_claim_after_a_retry(database):
    job_id = submit(database)
    claim(database, job_id, seq=1)
    dispatch = schedule_retry(database, job_id, 1, due_at=T0)

    assert dispatch.seq == 2
    assert claim(database, job_id, now=T0 + SECOND, seq=1) is None
    assert claim(database, job_id, now=T0 + SECOND, seq=2) is not None


def test_a_second_claim_of_the_same_message_gets_nothing(database):
    job_id = submit(database)

    assert claim(database, job_id, seq=1, worker="a") is not None
    assert claim(database, job_id, now=T0 + SECOND, seq=1, worker="b") is None
    row = job_row(database, job_id)
    assert (row.attempts, row.worker, row.claimed_at) == (1, "a", T0)


def test_claim_many_answers_in_the_order_asked_and_only_the_first_of_two_copies_claims(database):
    first, second, never = submit(database, "a"), submit(database, "b"), submit(database, "c", dispatch_now=False)

    answers = database.run(
        lambda conn: claims.claim_many(
            conn, [(second, 1), (first, 1), (second, 1), (never, 1), (uuid.uuid4(), 1)], now=T0, worker=WORKER
        )
    )

    assert [a.id if a else None for a in answers] == [second, first, None, None, None]
    assert job_row(database, second).attempts == 1


# --- succeed, fail, schedule_retry: fenced on the attempt ----------------------------------------------------


def test_success_of_the_current_attempt_completes_the_job_and_closes_the_attempt(database):
    job_id = submit(database)
    claim(database, job_id, now=T0, worker="w1")
    dispatch = schedule_retry(database, job_id, 1, now=T0 + SECOND, due_at=T0 + 2 * SECOND, error="boom")
    claim(database, job_id, now=T0 + 2 * SECOND, seq=dispatch.seq, worker="w2")

    assert succeed(database, job_id, 2, now=T0 + 3 * SECOND) is True

    row = job_row(database, job_id)
    assert (row.status, row.attempts, row.completed_at, row.updated_at) == (
        "SUCCESS",
        2,
        T0 + 3 * SECOND,
        T0 + 3 * SECOND,
    )
    assert (row.last_error, row.claimed_at, row.last_outcome) == (None, None, "success")
    assert [astuple(a) for a in history(database, job_id)] == [
        (1, T0, T0 + SECOND, "transient_error", "boom", "w1"),
        (2, T0 + 2 * SECOND, T0 + 3 * SECOND, "success", None, "w2"),
    ]


def test_a_permanent_failure_ends_the_job_and_closes_the_attempt_with_the_outcome_given(database):
    job_id = submit(database)
    claim(database, job_id, now=T0, worker="w1")

    assert fail(database, job_id, 1, now=T0 + SECOND, outcome=Outcome.PERMANENT_ERROR, error="550 unknown") is True

    row = job_row(database, job_id)
    assert (row.status, row.completed_at, row.last_error, row.claimed_at) == (
        "FAILED",
        T0 + SECOND,
        "550 unknown",
        None,
    )
    assert [astuple(a) for a in history(database, job_id)] == [
        (1, T0, T0 + SECOND, "permanent_error", "550 unknown", "w1")
    ]


def test_a_last_transient_failure_ends_the_job_with_the_transient_outcome(database):
    job_id = submit(database, max_attempts=1)
    claim(database, job_id)

    assert fail(database, job_id, 1, now=T0 + SECOND, outcome=Outcome.TRANSIENT_ERROR, error="timeout") is True

    assert job_row(database, job_id).status == "FAILED"
    assert [(a.outcome, a.error) for a in history(database, job_id)] == [("transient_error", "timeout")]


def test_a_retry_moves_the_job_to_retry_with_a_new_dispatch_and_closes_the_attempt_as_transient(database):
    job_id = submit(database)
    claim(database, job_id, now=T0, worker="w1")

    dispatch = schedule_retry(database, job_id, 1, now=T0 + SECOND, due_at=T0 + 3 * SECOND, error="503 busy")

    assert dispatch == Dispatch(job_id, 2, T0 + 3 * SECOND, "email")
    row = job_row(database, job_id)
    assert (row.status, row.next_attempt_at, row.dispatch_seq, row.attempts) == ("RETRY", T0 + 3 * SECOND, 2, 1)
    assert (row.last_error, row.claimed_at, row.completed_at, row.updated_at) == ("503 busy", None, None, T0 + SECOND)
    assert [astuple(a) for a in history(database, job_id)] == [
        (1, T0, T0 + SECOND, "transient_error", "503 busy", "w1")
    ]


@pytest.mark.parametrize("stale", [0, 2])
def test_a_result_for_another_attempt_number_changes_nothing(database, stale):
    job_id = submit(database)
    claim(database, job_id)
    before = job_row(database, job_id)

    assert succeed(database, job_id, stale) is False
    assert fail(database, job_id, stale) is False
    assert schedule_retry(database, job_id, stale) is None

    assert job_row(database, job_id) == before
    assert attempt_rows(database, job_id) == []


def test_a_late_success_after_the_rescuer_took_the_claim_back_does_not_overwrite_the_retry(database):
    # River's rescuer race: the reconciler expires attempt 1; its worker reports success afterwards.
    job_id = submit(database)
    claim(database, job_id, now=T0, worker="slow")
    later = T0 + VISIBILITY + SECOND
    dispatches, failed = expire(database, [(job_id, 1)], now=later)
    assert ([d.job_id for d in dispatches], failed) == ([job_id], [])

    assert succeed(database, job_id, 1, now=later + SECOND) is False

    row = job_row(database, job_id)
    assert (row.status, row.attempts, row.completed_at) == ("RETRY", 1, None)
    assert [(a.number, a.outcome) for a in history(database, job_id)] == [(1, "timed_out")]


def test_a_late_result_of_the_old_attempt_does_not_touch_the_new_attempt(database):
    job_id = submit(database)
    claim(database, job_id, now=T0, worker="slow")
    later = T0 + VISIBILITY + SECOND
    [dispatch], _ = expire(database, [(job_id, 1)], now=later)
    claim(database, job_id, now=later, seq=dispatch.seq, worker="fresh")
    before = job_row(database, job_id)

    assert succeed(database, job_id, 1, now=later + SECOND) is False
    assert fail(database, job_id, 1, now=later + SECOND) is False
    assert schedule_retry(database, job_id, 1, now=later + SECOND) is None

    assert job_row(database, job_id) == before
    assert succeed(database, job_id, 2, now=later + 2 * SECOND) is True
    assert [(a.number, a.outcome, a.worker) for a in history(database, job_id)] == [
        (1, "timed_out", "slow"),
        (2, "success", "fresh"),
    ]


@pytest.mark.parametrize("status", [Status.PENDING, Status.RETRY, Status.SUCCESS, Status.FAILED, Status.CANCELLED])
def test_results_are_recorded_only_for_a_job_being_processed(database, status):
    job_id = job_in(database, status, "k")
    before = job_row(database, job_id)

    assert succeed(database, job_id, before.attempts, now=T0 + SECOND) is False
    assert fail(database, job_id, before.attempts, now=T0 + SECOND) is False
    assert schedule_retry(database, job_id, before.attempts, now=T0 + SECOND) is None

    assert job_row(database, job_id) == before


def test_succeed_many_completes_only_the_attempts_still_held(database):
    held, taken_back, done = submit(database, "a"), submit(database, "b"), submit(database, "c")
    for job_id in (held, taken_back, done):
        claim(database, job_id)
    expire(database, [(taken_back, 1)], now=T0 + VISIBILITY + SECOND)
    succeed(database, done, 1)

    answers = database.run(
        lambda conn: claims.succeed_many(conn, [(done, 1), (held, 1), (taken_back, 1)], now=T0 + 2 * SECOND)
    )

    assert answers == [False, True, False]
    assert [job_row(database, j).status for j in (held, taken_back, done)] == ["SUCCESS", "RETRY", "SUCCESS"]


def test_succeed_and_claim_does_both_batches_at_once_with_the_answers_of_each_alone(database):
    held, taken_back, waiting = submit(database, "a"), submit(database, "b"), submit(database, "c")
    scheduled = submit(database, "d", send_at=T0 + 10 * SECOND)
    for job_id in (held, taken_back):
        claim(database, job_id)
    expire(database, [(taken_back, 1)], now=T0 + VISIBILITY + SECOND)
    now = T0 + VISIBILITY + 2 * SECOND

    done, claimed = database.run(
        lambda conn: claims.succeed_and_claim(
            conn,
            [(held, 1), (taken_back, 1), (waiting, 1)],
            [(waiting, 1), (taken_back, 1), (held, 1), (scheduled, 1), (waiting, 1)],
            now=now,
            worker="w2",
        )
    )

    assert done == [True, False, False]
    # taken_back was re-dispatched by the expiry (seq 2), so its seq-1 message claims nothing.
    assert [c.id if c else None for c in claimed] == [waiting, None, None, scheduled, None]
    assert claimed[0] == claims.ClaimedJob(
        waiting, "user@example.com", "email", "Halo dari sistem worker!", None, None, 1, 3
    )
    assert [job_row(database, j).status for j in (held, taken_back, waiting, scheduled)] == [
        "SUCCESS", "RETRY", "PROCESSING", "PROCESSING",
    ]  # fmt: skip
    assert attempt_rows(database, held)[0].outcome == "success"
    assert job_row(database, waiting).worker == "w2"


@pytest.mark.parametrize("kinds", ["successes only", "claims only", "neither"])
def test_succeed_and_claim_with_one_batch_empty(database, kinds):
    held, waiting = submit(database, "a"), submit(database, "b")
    claim(database, held)
    attempts = [(held, 1)] if kinds == "successes only" else []
    dispatches = [(waiting, 1)] if kinds == "claims only" else []

    done, claimed = database.run(
        lambda conn: claims.succeed_and_claim(conn, attempts, dispatches, now=T0 + SECOND, worker=WORKER)
    )

    assert done == [True] * len(attempts)
    assert [c.id for c in claimed] == [waiting] * len(dispatches)


# --- cancel ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(WAITING))
def test_a_waiting_job_is_cancelled_and_its_message_no_longer_claims(database, status):
    job_id = job_in(database, status, "k")
    seq = job_row(database, job_id).dispatch_seq

    assert cancel(database, job_id, now=T0 + SECOND) is True

    row = job_row(database, job_id)
    assert (row.status, row.completed_at, row.updated_at) == ("CANCELLED", T0 + SECOND, T0 + SECOND)
    assert claim(database, job_id, now=T0 + 2 * SECOND, seq=seq) is None


@pytest.mark.parametrize("status", [Status.PROCESSING, Status.SUCCESS, Status.FAILED, Status.CANCELLED])
def test_a_job_that_is_held_or_finished_is_not_cancelled(database, status):
    job_id = job_in(database, status, "k")
    before = job_row(database, job_id)

    assert cancel(database, job_id, now=T0 + SECOND) is False
    assert job_row(database, job_id) == before


def test_a_job_is_cancelled_only_in_its_own_scope(database):
    job_id = submit(database, scope="key-a")

    assert cancel(database, job_id, scope="key-b") is False
    assert cancel(database, job_id, scope="") is False
    assert job_row(database, job_id).status == "PENDING"
    assert cancel(database, job_id, scope="key-a") is True


def test_an_unknown_job_is_not_cancelled(database):
    assert cancel(database, uuid.uuid4()) is False


# --- manual retry ------------------------------------------------------------------------------------------


def test_a_manual_retry_gives_a_failed_job_a_fresh_budget_and_keeps_its_history(database):
    job_id = submit(database, max_attempts=2)
    claim(database, job_id, now=T0)
    dispatch = schedule_retry(database, job_id, 1, now=T0 + SECOND, due_at=T0 + 2 * SECOND)
    claim(database, job_id, now=T0 + 2 * SECOND, seq=dispatch.seq)
    fail(database, job_id, 2, now=T0 + 3 * SECOND, outcome=Outcome.TRANSIENT_ERROR, error="still down")
    seq = job_row(database, job_id).dispatch_seq
    old_history = history(database, job_id)

    retried = manual_retry(database, job_id, now=T0 + 10 * SECOND, extra=5)

    assert retried == Dispatch(job_id, seq + 1, T0 + 10 * SECOND, "email")
    row = job_row(database, job_id)
    assert (row.status, row.attempts, row.max_attempts, row.dispatch_seq) == ("PENDING", 2, 7, seq + 1)
    assert (row.next_attempt_at, row.completed_at, row.updated_at) == (T0 + 10 * SECOND, None, T0 + 10 * SECOND)
    assert history(database, job_id) == old_history
    assert claim(database, job_id, now=T0 + 10 * SECOND, seq=seq) is None
    again = claim(database, job_id, now=T0 + 10 * SECOND, seq=seq + 1)
    assert again is not None and (again.attempt, again.max_attempts) == (3, 7)
    succeed(database, job_id, 3, now=T0 + 11 * SECOND)
    assert [a.number for a in history(database, job_id)] == [1, 2, 3]


@pytest.mark.parametrize("status", [Status.PENDING, Status.PROCESSING, Status.RETRY, Status.SUCCESS, Status.CANCELLED])
def test_only_a_failed_job_is_retried_by_hand(database, status):
    job_id = job_in(database, status, "k")
    before = job_row(database, job_id)

    assert manual_retry(database, job_id, now=T0 + SECOND) is None
    assert job_row(database, job_id) == before


# --- expire (the reconciler's rescuer) ---------------------------------------------------------------------


def test_an_expired_claim_with_attempts_left_goes_back_to_retry_due_now(database):
    job_id = submit(database, max_attempts=3)
    claim(database, job_id, now=T0, worker="gone")
    now = T0 + VISIBILITY + SECOND

    dispatches, failed = expire(database, [(job_id, 1)], now=now, error="visibility timeout: 60s")

    assert (dispatches, failed) == ([Dispatch(job_id, 2, now, "email")], [])
    row = job_row(database, job_id)
    assert (row.status, row.next_attempt_at, row.dispatch_seq, row.attempts) == ("RETRY", now, 2, 1)
    assert (row.claimed_at, row.completed_at, row.last_error) == (None, None, "visibility timeout: 60s")
    assert [astuple(a) for a in history(database, job_id)] == [
        (1, T0, now, "timed_out", "visibility timeout: 60s", "gone")
    ]
    assert claim(database, job_id, now=now, seq=1) is None
    assert claim(database, job_id, now=now, seq=2) is not None


def test_an_expired_claim_of_the_last_attempt_fails_the_job(database):
    job_id = submit(database, max_attempts=1)
    claim(database, job_id, now=T0, worker="gone")
    now = T0 + VISIBILITY + SECOND

    dispatches, failed = expire(database, [(job_id, 1)], now=now)

    assert (dispatches, failed) == ([], [job_id])
    row = job_row(database, job_id)
    assert (row.status, row.completed_at, row.last_error, row.claimed_at) == ("FAILED", now, TIMEOUT_ERROR, None)
    assert row.dispatch_seq == 1
    assert [(a.number, a.outcome, a.error) for a in history(database, job_id)] == [(1, "timed_out", TIMEOUT_ERROR)]


def test_a_claim_made_after_the_cutoff_is_not_expired(database):
    job_id = submit(database)
    claim(database, job_id, now=T0)
    before = job_row(database, job_id)

    assert expire(database, [(job_id, 1)], now=T0 + SECOND, cutoff=T0) == ([], [])
    assert expire(database, [(job_id, 1)], now=T0 + SECOND, cutoff=T0 - SECOND) == ([], [])
    assert job_row(database, job_id) == before


def test_a_job_that_completed_after_the_reconciler_read_it_is_left_alone(database):
    job_id = submit(database)
    claim(database, job_id, now=T0)
    now = T0 + VISIBILITY + SECOND
    claims = database.run(lambda conn: maintenance.expired_claims(conn, cutoff=now - VISIBILITY, limit=10))
    assert claims == [(job_id, 1)]
    succeed(database, job_id, 1, now=now)
    before = job_row(database, job_id)

    assert expire(database, claims, now=now) == ([], [])
    assert job_row(database, job_id) == before
    assert [a.outcome for a in history(database, job_id)] == ["success"]


def test_an_expiry_read_for_an_older_attempt_does_not_take_back_a_newer_claim(database):
    job_id = submit(database)
    claim(database, job_id, now=T0)
    stale_read = [(job_id, 1)]
    # Another reconciler pass expires attempt 1, and a worker claims attempt 2 — also long ago.
    [dispatch], _ = expire(database, stale_read, now=T0 + 2 * SECOND, cutoff=T0 + SECOND)
    claim(database, job_id, now=T0 + 2 * SECOND, seq=dispatch.seq)
    before = job_row(database, job_id)

    assert expire(database, stale_read, now=T0 + VISIBILITY * 2) == ([], [])
    assert job_row(database, job_id) == before
    assert expire(database, [(job_id, 2)], now=T0 + VISIBILITY * 2)[0][0].job_id == job_id


def test_two_overlapping_passes_expire_a_claim_once(database):
    job_id = submit(database)
    claim(database, job_id, now=T0)
    now = T0 + VISIBILITY + SECOND

    first = expire(database, [(job_id, 1)], now=now)
    second = expire(database, [(job_id, 1)], now=now)

    assert (len(first[0]), second) == (1, ([], []))
    assert len(attempt_rows(database, job_id)) == 1


def test_expire_sorts_a_mixed_batch_into_retries_and_failures(database):
    retried, failing, fresh = submit(database, "a"), submit(database, "b", max_attempts=1), submit(database, "c")
    claim(database, retried, now=T0)
    claim(database, failing, now=T0)
    claim(database, fresh, now=T0 + VISIBILITY)
    now = T0 + VISIBILITY + SECOND

    dispatches, failed = expire(database, [(retried, 1), (failing, 1), (fresh, 1)], now=now)

    assert ([d.job_id for d in dispatches], failed) == ([retried], [failing])
    assert job_row(database, fresh).status == "PROCESSING"
    assert expire(database, [], now=now) == ([], [])


# --- redispatch -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(WAITING))
def test_a_lost_message_is_redispatched_once_for_the_seq_that_was_read(database, status):
    job_id = job_in(database, status, "k")
    row = job_row(database, job_id)

    first = redispatch(database, [(job_id, row.dispatch_seq)], now=T0 + SECOND)
    second = redispatch(database, [(job_id, row.dispatch_seq)], now=T0 + SECOND)

    assert first == [Dispatch(job_id, row.dispatch_seq + 1, row.next_attempt_at, "email")]
    assert second == []
    after = job_row(database, job_id)
    assert (after.status, after.dispatch_seq, after.next_attempt_at) == (
        row.status,
        row.dispatch_seq + 1,
        row.next_attempt_at,
    )
    assert claim(database, job_id, now=T0 + 2 * SECOND, seq=row.dispatch_seq) is None
    assert claim(database, job_id, now=T0 + 2 * SECOND, seq=row.dispatch_seq + 1) is not None


def test_a_job_never_dispatched_gets_its_first_dispatch(database):
    job_id = submit(database, dispatch_now=False, send_at=T0 + timedelta(hours=1))

    assert redispatch(database, [(job_id, 0)]) == [Dispatch(job_id, 1, T0 + timedelta(hours=1), "email")]
    assert redispatch(database, [(job_id, 0)]) == []


@pytest.mark.parametrize("status", [Status.PROCESSING, Status.SUCCESS, Status.FAILED, Status.CANCELLED])
def test_only_waiting_jobs_are_redispatched(database, status):
    job_id = job_in(database, status, "k")
    before = job_row(database, job_id)

    assert redispatch(database, [(job_id, before.dispatch_seq)], now=T0 + SECOND) == []
    assert job_row(database, job_id) == before
    assert redispatch(database, []) == []


# --- the table of states ------------------------------------------------------------------------------------

Operation = Callable[[Any, uuid.UUID, Any], Any]


def _op_claim(database, job_id, row):
    return claim(database, job_id, now=T0 + SECOND, seq=row.dispatch_seq)


def _op_succeed(database, job_id, row):
    return succeed(database, job_id, row.attempts, now=T0 + SECOND)


def _op_fail(database, job_id, row):
    return fail(database, job_id, row.attempts, now=T0 + SECOND)


def _op_schedule_retry(database, job_id, row):
    return schedule_retry(database, job_id, row.attempts, now=T0 + SECOND)


def _op_expire(database, job_id, row):
    return expire(database, [(job_id, row.attempts)], now=T0 + VISIBILITY * 2)


def _op_cancel(database, job_id, row):
    return cancel(database, job_id, now=T0 + SECOND)


def _op_manual_retry(database, job_id, row):
    return manual_retry(database, job_id, now=T0 + SECOND)


def _op_redispatch(database, job_id, row):
    return redispatch(database, [(job_id, row.dispatch_seq)], now=T0 + SECOND)


def _op_throttle(database, job_id, row):
    return database.run(
        lambda conn: transitions.throttle(
            conn, job_id, row.attempts, now=T0 + SECOND, due_at=T0 + 2 * SECOND, error="429", max_throttles=5
        )
    )


def _op_give_up_deferred(database, job_id, row):
    """Deferred (if waiting) at T0, then given up 100 s later with a most deferral of 10 s."""
    database.run(lambda conn: transitions.record_deferrals(conn, [(job_id, row.dispatch_seq, "circuit")], now=T0))
    return database.run(
        lambda conn: transitions.give_up_deferred(conn, now=T0 + 100 * SECOND, max_deferral=10, job_ids=[job_id])
    )


#: Every way the ledger changes a job, each with the job's current seq and attempt (the most permissive call).
OPERATIONS: dict[str, Operation] = {
    "claim": _op_claim,
    "succeed": _op_succeed,
    "fail": _op_fail,
    "schedule_retry": _op_schedule_retry,
    "expire": _op_expire,
    "cancel": _op_cancel,
    "manual_retry": _op_manual_retry,
    "redispatch": _op_redispatch,
    "throttle": _op_throttle,
    "give_up_deferred": _op_give_up_deferred,
}

#: Which operation (and with how many attempts allowed) performs each named transition of `TRANSITIONS`.
PERFORMS = {
    "claim": ("claim", 3),
    "succeed": ("succeed", 3),
    "schedule_retry": ("schedule_retry", 3),
    "fail": ("fail", 3),
    "expire_to_retry": ("expire", 3),
    "expire_to_failed": ("expire", 1),
    "cancel": ("cancel", 3),
    "manual_retry": ("manual_retry", 3),
    "throttle": ("throttle", 3),
    "give_up_deferred": ("give_up_deferred", 3),
}


def test_every_transition_of_the_table_is_exercised_here():
    assert set(PERFORMS) == set(TRANSITIONS)


@pytest.mark.parametrize("name", sorted(TRANSITIONS))
def test_each_transition_moves_a_job_from_each_of_its_sources_to_its_target(database, name):
    sources, target = TRANSITIONS[name]
    operation, max_attempts = PERFORMS[name]
    for n, source in enumerate(sorted(sources)):
        job_id = job_in(database, source, f"{name}-{n}", max_attempts=max_attempts)
        result = OPERATIONS[operation](database, job_id, job_row(database, job_id))
        assert result not in (None, False, [], ([], [])), (name, source)
        assert job_row(database, job_id).status == target, (name, source)


def _observed_moves(database) -> set[tuple[Status, Status]]:
    """Apply every operation to a job in every status (with 1 and with 3 attempts allowed); what changed."""
    moves = set()
    keys = itertools.count()
    for source, operation, max_attempts in itertools.product(Status, OPERATIONS, (1, 3)):
        job_id = job_in(database, source, f"job-{next(keys)}", max_attempts=max_attempts)
        OPERATIONS[operation](database, job_id, job_row(database, job_id))
        target = Status(job_row(database, job_id).status)
        if target != source:
            moves.add((source, target))
    return moves


def test_allowed_agrees_with_what_the_ledger_actually_does(database):
    observed = _observed_moves(database)

    declared = {(s, t) for s in Status for t in Status if s != t and allowed(s, t)}
    assert observed == declared
    assert not any(allowed(s, t) for s in (Status.SUCCESS, Status.CANCELLED) for t in Status)
    assert [t for t in Status if allowed(Status.FAILED, t)] == [Status.PENDING]


@pytest.mark.parametrize("status", [Status.SUCCESS, Status.CANCELLED])
def test_a_terminal_job_never_changes_whatever_is_asked(database, status):
    job_id = job_in(database, status, "k")
    before = job_row(database, job_id)
    history_before = history(database, job_id)

    for operation in OPERATIONS.values():
        operation(database, job_id, job_row(database, job_id))

    assert job_row(database, job_id) == before
    assert history(database, job_id) == history_before


def test_a_failed_job_leaves_failed_only_by_a_manual_retry(database):
    for name, operation in OPERATIONS.items():
        job_id = job_in(database, Status.FAILED, f"k-{name}")
        before = job_row(database, job_id)
        operation(database, job_id, before)
        after = job_row(database, job_id)
        if name == "manual_retry":
            assert after.status == "PENDING"
        else:
            assert after == before, name


def test_the_table_names_every_status_and_no_transition_leaves_a_terminal_state():
    statuses = {s for sources, target in TRANSITIONS.values() for s in (*sources, target)}
    assert statuses == set(Status)
    assert {Status.SUCCESS, Status.FAILED, Status.CANCELLED} == FINISHED
    leaving_finished = {name for name, (sources, _) in TRANSITIONS.items() if sources & FINISHED}
    assert leaving_finished == {"manual_retry"}
