"""Cancelling, retrying by hand, the reconciler's expiry and redispatch on both databases: one guarded UPDATE each."""

from __future__ import annotations

import uuid
from dataclasses import astuple
from datetime import timedelta

import pytest

from ledger import maintenance
from ledger.states import WAITING, Outcome, Status
from ledger.transitions import Dispatch
from tests.ledger.conftest import SECOND, T0, attempt_rows, claim, history, job_in, job_row, submit
from tests.ledger.steps import (
    TIMEOUT_ERROR,
    VISIBILITY,
    cancel,
    expire,
    fail,
    manual_retry,
    redispatch,
    schedule_retry,
    succeed,
)

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
