"""A job's claim and the results of its attempt on both databases: one guarded UPDATE each, fenced on the dispatch and
the attempt."""

from __future__ import annotations

import uuid
from dataclasses import astuple
from datetime import timedelta

import pytest

from ledger import claims
from ledger.claims import EARLY_CLAIM_TOLERANCE
from ledger.states import Outcome, Status
from ledger.transitions import Dispatch
from tests.ledger.conftest import SECOND, T0, WORKER, attempt_rows, claim, history, job_in, job_row, submit
from tests.ledger.steps import (
    VISIBILITY,
    expire,
    fail,
    schedule_retry,
    succeed,
)

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
