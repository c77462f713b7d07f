"""Status callbacks in the ledger, on PostgreSQL and SQLite: armed in the transaction that finishes the job, whatever
finishes it (already claimed for its worker when that worker finished it, to POST itself); fenced on their dispatch
and on the job's status; taken back and re-dispatched like jobs."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from ledger import callback_recovery, callbacks, claims, transitions
from ledger.database import Database
from ledger.queries import get_job, job_document
from ledger.schema import callbacks as callbacks_table
from ledger.states import Outcome, Status
from tests.ledger.conftest import SECOND, T0, armed_as_before_0010, claim, submit

URL = "https://hooks.example.com/status"
DESTINATION = "webhook:hooks.example.com:443"


def with_callback(database: Database, key: str, **fields) -> uuid.UUID:
    return submit(database, key, callback_url=URL, callback_destination=DESTINATION, **fields)


def row(database: Database, job_id: uuid.UUID):
    return database.run(
        lambda conn: conn.execute(select(callbacks_table).where(callbacks_table.c.job_id == job_id)).first()
    )


def fail_attempt(database: Database, job_id: uuid.UUID, attempt: int = 1) -> None:
    assert database.run(
        lambda conn: transitions.fail(conn, job_id, attempt, now=T0, outcome=Outcome.PERMANENT_ERROR, error="no")
    )


def test_a_job_without_a_callback_url_has_no_callback(database: Database) -> None:
    job_id = submit(database, "plain")
    claim(database, job_id)
    assert database.run(lambda conn: claims.succeed(conn, job_id, 1, now=T0))
    assert row(database, job_id) is None
    assert database.run(lambda conn: callbacks.callback_view(conn, job_id)) is None


def test_the_callback_is_armed_by_the_workers_success_in_its_own_statement(database: Database) -> None:
    job_id = with_callback(database, "ok")
    assert database.run(lambda conn: callbacks.callback_view(conn, job_id)) == callbacks.CallbackView(
        URL, None, None, 0, None
    )
    claim(database, job_id)
    assert database.run(lambda conn: claims.succeed_many(conn, [(job_id, 1)], now=T0)) == [True]
    armed = row(database, job_id)
    # Claimed already for its first attempt: the worker that finished the job POSTs it, without a message or a claim.
    assert (armed.event, armed.status, armed.attempts, armed.dispatch_seq, armed.destination) == (
        "SUCCESS", "PROCESSING", 1, 1, DESTINATION
    )  # fmt: skip
    assert armed.claimed_at == armed.updated_at == T0
    assert database.run(lambda conn: callbacks.succeed(conn, job_id, 1, now=T0))


@pytest.mark.parametrize("with_claims", [False, True], ids=["successes-alone", "with-claims"])
def test_the_success_statement_returns_the_callbacks_body_as_the_jobs_get_shows_it(
    database: Database, with_claims: bool
) -> None:
    job_id = with_callback(database, "body", subject="hi", metadata={"k": [1]})
    plain, other = submit(database, "plain"), submit(database, "other")
    held = [claim(database, j) for j in (job_id, plain)]
    dispatches = [(other, 1)] if with_claims else []
    finished: dict[uuid.UUID, claims.Finished] = {}
    done, claimed = database.run(
        lambda conn: claims.succeed_and_claim(
            conn, [(job_id, 1), (plain, 1)], dispatches, now=T0 + SECOND, worker="w", database_clock=True,
            finished=finished,
        ),
        kept=True,
    )  # fmt: skip
    assert (done, [c is not None for c in claimed], list(finished)) == ([True, True], [True] * len(dispatches),
                                                                        [job_id])  # fmt: skip
    sent = claims.claimed_by_its_worker(held[0], finished[job_id])
    shown = database.run(lambda conn: get_job(conn, job_id, scope=None))
    assert job_document(sent.job) == job_document(shown)
    assert (sent.url, sent.event, sent.attempt) == (URL, Status.SUCCESS, callbacks.ARMED_ATTEMPT)


@pytest.mark.parametrize("jobs", ["successes-and-claims", "successes-alone", "no-job"])
def test_callbacks_delivered_are_recorded_in_the_jobs_statement_once_and_only_while_held(
    database: Database, jobs: str
) -> None:
    delivered, stale = with_callback(database, "delivered"), with_callback(database, "stale")
    for job_id in (delivered, stale):
        claim(database, job_id)
    assert database.run(lambda conn: claims.succeed_many(conn, [(delivered, 1), (stale, 1)], now=T0)) == [True] * 2
    plain, other = submit(database, "plain"), submit(database, "other")
    claim(database, plain)
    attempts = [] if jobs == "no-job" else [(plain, 1)]
    dispatches = [(other, 1)] if jobs == "successes-and-claims" else []
    recorded: set[uuid.UUID] = {uuid.uuid4()}  # cleared by the call
    done, claimed = database.run(
        lambda conn: claims.succeed_and_claim(
            conn, attempts, dispatches, now=T0 + SECOND, worker="w", database_clock=True,
            delivered=[(delivered, 1), (stale, 2)], recorded=recorded,
        ),
        kept=True,
    )  # fmt: skip
    assert (done, [c is not None for c in claimed]) == ([True] * len(attempts), [True] * len(dispatches))
    # Recorded only at the attempt held: a stale attempt's delivery changes nothing.
    assert recorded == {delivered}
    assert (row(database, delivered).status, row(database, delivered).claimed_at) == ("SUCCESS", None)
    assert (row(database, stale).status, row(database, stale).attempts) == ("PROCESSING", 1)
    assert database.run(lambda conn: callbacks.callback_view(conn, delivered)) == callbacks.CallbackView(
        URL, Status.SUCCESS, Status.SUCCESS, 1, None
    )
    # Once: a second delivery of the same attempt (a statement run again) takes nothing.
    again = database.run(
        lambda conn: claims.succeed_and_claim(conn, [], [], now=T0, worker="w", delivered=[(delivered, 1)],
                                              recorded=recorded),
        kept=True,
    )  # fmt: skip
    assert (again, recorded) == (([], []), set())


def test_a_callback_its_worker_gives_back_waits_for_a_message_or_is_parked(database: Database) -> None:
    sent, parked = with_callback(database, "sent"), with_callback(database, "parked")
    for job_id in (sent, parked):
        claim(database, job_id)
        assert database.run(lambda conn, job_id=job_id: claims.succeed(conn, job_id, 1, now=T0))
    later = T0 + 3600 * SECOND
    dispatch = database.run(lambda conn: callbacks.give_back(conn, sent, 1, now=T0, due_at=T0 + SECOND, parked=False))
    assert isinstance(dispatch, transitions.Dispatch) and (dispatch.seq, dispatch.due_at) == (2, T0 + SECOND)
    assert database.run(lambda conn: callbacks.give_back(conn, parked, 1, now=T0, due_at=later, parked=True)) is True
    assert not database.run(lambda conn: callbacks.give_back(conn, parked, 1, now=T0, due_at=later, parked=True))
    assert (row(database, sent).status, row(database, sent).attempts) == ("PENDING", 0)
    assert (row(database, parked).dispatch_seq, row(database, parked).next_attempt_at) == (-1, later)
    # The attempt given back was not counted: the message's claim is attempt 1.
    assert database.run(lambda conn: callbacks.claim(conn, sent, 2, now=T0 + SECOND)).attempt == 1
    candidates = database.run(
        lambda conn: callback_recovery.waiting_candidates(conn, overdue_before=later, schedule_until=later, limit=10)
    )
    assert candidates == [(parked, -1, later)]


def test_the_callback_is_armed_by_a_failure_a_cancellation_an_expiry_and_a_deferral_given_up(
    database: Database,
) -> None:
    failed = with_callback(database, "failed")
    claim(database, failed)
    fail_attempt(database, failed)
    cancelled = with_callback(database, "cancelled")
    assert database.run(lambda conn: transitions.cancel(conn, cancelled, scope="", now=T0))
    expired = with_callback(database, "expired", max_attempts=1)
    claim(database, expired)
    _, gone = database.run(
        lambda conn: transitions.expire(conn, [(expired, 1)], now=T0 + 60 * SECOND, cutoff=T0 + SECOND, error="vt")
    )
    assert gone == [expired]
    deferred = with_callback(database, "deferred")
    database.run(lambda conn: transitions.record_deferrals(conn, [(deferred, 1, "circuit")], now=T0))
    given_up = database.run(
        lambda conn: transitions.give_up_deferred(conn, now=T0 + 100 * SECOND, max_deferral=10, job_ids=[deferred])
    )
    assert given_up == [deferred]
    armed = {job_id: row(database, job_id) for job_id in (failed, cancelled, expired, deferred)}
    assert {job_id: r.event for job_id, r in armed.items()} == {
        failed: "FAILED", cancelled: "CANCELLED", expired: "FAILED", deferred: "FAILED"
    }  # fmt: skip
    # Only the worker's own failure arms it claimed (that worker sends it); the others wait for a message.
    assert {job_id: (r.status, r.dispatch_seq) for job_id, r in armed.items()} == {
        failed: ("PROCESSING", 1), cancelled: ("PENDING", 0), expired: ("PENDING", 0), deferred: ("PENDING", 0)
    }  # fmt: skip


def test_a_finish_that_rolls_back_arms_nothing(database: Database) -> None:
    job_id = with_callback(database, "rolled-back")

    def cancel_then_fail(conn) -> None:
        assert transitions.cancel(conn, job_id, scope="", now=T0)
        raise RuntimeError("the transaction dies after the cancellation")

    with pytest.raises(RuntimeError):
        database.run(cancel_then_fail, transaction=True)
    assert row(database, job_id) is None


def test_a_dispatch_claims_once_and_an_older_one_never(database: Database) -> None:
    job_id = with_callback(database, "claims")
    assert database.run(lambda conn: transitions.cancel(conn, job_id, scope="", now=T0))
    [dispatch] = database.run(lambda conn: callbacks.dispatch_armed(conn, [job_id], now=T0))
    assert (dispatch.seq, dispatch.destination) == (1, DESTINATION)
    assert database.run(lambda conn: callbacks.dispatch_armed(conn, [job_id], now=T0)) == []
    held = database.run(lambda conn: callbacks.claim(conn, job_id, 1, now=T0), transaction=True)
    assert held is not None
    assert (held.url, held.event, held.attempt, held.job.status) == (URL, Status.CANCELLED, 1, Status.CANCELLED)
    assert database.run(lambda conn: callbacks.claim(conn, job_id, 1, now=T0), transaction=True) is None
    retry = database.run(
        lambda conn: callbacks.schedule_retry(
            conn, job_id, 1, now=T0, due_at=T0 + 2 * SECOND, error="HTTP 500", parked=False
        )
    )
    assert isinstance(retry, transitions.Dispatch) and retry.seq == 2
    assert database.run(lambda conn: callbacks.claim(conn, job_id, 1, now=T0 + 5 * SECOND)) is None
    assert database.run(lambda conn: callbacks.claim(conn, job_id, 2, now=T0)) is None  # not yet due
    assert database.run(lambda conn: callbacks.claim(conn, job_id, 2, now=T0 + 5 * SECOND)).attempt == 2
    assert not database.run(lambda conn: callbacks.succeed(conn, job_id, 1, now=T0))
    assert database.run(lambda conn: callbacks.succeed(conn, job_id, 2, now=T0))
    view = database.run(lambda conn: callbacks.callback_view(conn, job_id))
    assert view == callbacks.CallbackView(URL, Status.CANCELLED, Status.SUCCESS, 2, None)


def test_a_manual_retry_holds_the_failed_callback_and_the_next_finish_rearms_it(database: Database) -> None:
    job_id = with_callback(database, "retried")
    claim(database, job_id)
    fail_attempt(database, job_id)
    first = row(database, job_id)
    assert first.dispatch_seq == 1
    # Its worker gave it back (its destination deferred it): a message would claim it.
    assert database.run(lambda conn: callbacks.give_back(conn, job_id, 1, now=T0, due_at=T0, parked=False))
    dispatch = database.run(lambda conn: transitions.manual_retry(conn, job_id, now=T0, extra_attempts=3))
    assert dispatch is not None
    # The job is no longer FAILED: the failed callback does not claim, and no pass sends it meanwhile.
    assert database.run(lambda conn: callbacks.claim(conn, job_id, 2, now=T0)) is None
    candidates = database.run(
        lambda conn: callback_recovery.waiting_candidates(
            conn, overdue_before=T0 + 60 * SECOND, schedule_until=T0 + 60 * SECOND, limit=10
        )
    )
    assert candidates == []
    assert database.run(lambda conn: claims.claim(conn, job_id, dispatch.seq, now=T0, worker="w")) is not None
    assert database.run(lambda conn: claims.succeed(conn, job_id, 2, now=T0))
    rearmed = row(database, job_id)
    # Re-armed claimed by the worker's success, past the seq of any message of the first finish.
    assert (rearmed.event, rearmed.status, rearmed.attempts, rearmed.dispatch_seq) == ("SUCCESS", "PROCESSING", 1, 3)
    assert database.run(lambda conn: callbacks.claim(conn, job_id, 2, now=T0)) is None


def test_a_callback_rearmed_while_its_last_attempt_is_held_is_no_longer_that_attempts(database: Database) -> None:
    job_id = with_callback(database, "held")
    claim(database, job_id)
    fail_attempt(database, job_id)
    # Its worker still POSTs the FAILED callback when an operator retries the job, which succeeds at once.
    dispatch = database.run(lambda conn: transitions.manual_retry(conn, job_id, now=T0, extra_attempts=3))
    assert database.run(lambda conn: claims.claim(conn, job_id, dispatch.seq, now=T0, worker="w")) is not None
    assert database.run(lambda conn: claims.succeed(conn, job_id, 2, now=T0))
    rearmed = row(database, job_id)
    assert (rearmed.event, rearmed.status, rearmed.attempts) == ("SUCCESS", "PROCESSING", 2)
    # The FAILED callback's success does not pass for the SUCCESS one's, which nobody POSTed: the reconciler will.
    assert not database.run(lambda conn: callbacks.succeed(conn, job_id, 1, now=T0))


def test_the_finishing_workers_claim_takes_the_armed_callback_once_whatever_its_seq(database: Database) -> None:
    job_id = with_callback(database, "armed")
    claim(database, job_id)
    assert database.run(lambda conn: claims.succeed(conn, job_id, 1, now=T0))
    armed_as_before_0010(database, job_id)
    # A reconciler pass that found its message missing sent a newer dispatch meanwhile.
    [newer] = database.run(lambda conn: callback_recovery.redispatch(conn, [(job_id, 1)], now=T0))
    held = database.run(lambda conn: callbacks.claim(conn, job_id, callbacks.ARMED_SEQ, now=T0), transaction=True)
    assert held is not None and (held.event, held.attempt) == (Status.SUCCESS, 1)
    # Once attempted, neither the armed claim nor the newer message takes it again.
    assert database.run(lambda conn: callbacks.claim(conn, job_id, callbacks.ARMED_SEQ, now=T0)) is None
    assert database.run(lambda conn: callbacks.claim(conn, job_id, newer.seq, now=T0)) is None
    # A callback armed unsent (a cancellation) is no worker's to claim without a message.
    cancelled = with_callback(database, "cancelled")
    assert database.run(lambda conn: transitions.cancel(conn, cancelled, scope="", now=T0))
    assert database.run(lambda conn: callbacks.claim(conn, cancelled, callbacks.ARMED_SEQ, now=T0)) is None


def test_the_reconciler_reads_unsent_and_overdue_callbacks_and_takes_back_vanished_claims(database: Database) -> None:
    unsent, lost, held = (with_callback(database, key) for key in ("unsent", "lost", "held"))
    for job_id in (unsent, lost, held):
        assert database.run(lambda conn, job_id=job_id: transitions.cancel(conn, job_id, scope="", now=T0))
    database.run(lambda conn: callbacks.dispatch_armed(conn, [lost, held], now=T0))
    assert database.run(lambda conn: callbacks.claim(conn, held, 1, now=T0)) is not None
    candidates = database.run(
        lambda conn: callback_recovery.waiting_candidates(
            conn, overdue_before=T0 + 10 * SECOND, schedule_until=T0 + 10 * SECOND, limit=10
        )
    )
    assert sorted(candidates) == sorted([(unsent, 0, T0), (lost, 1, T0)])
    sent = database.run(lambda conn: callback_recovery.redispatch(conn, [(unsent, 0), (lost, 1)], now=T0))
    assert sorted((d.job_id, d.seq) for d in sent) == sorted([(unsent, 1), (lost, 2)])
    assert database.run(lambda conn: callback_recovery.redispatch(conn, [(unsent, 0), (lost, 1)], now=T0)) == []

    def expire(max_attempts: int, cutoff=T0 + 30 * SECOND):
        return database.run(
            lambda conn: callback_recovery.expire(
                conn, now=cutoff + 30 * SECOND, cutoff=cutoff, max_attempts=max_attempts, error="vt", limit=10
            ),
            transaction=True,
        )

    dispatches, failed = expire(max_attempts=3)
    assert ([(d.job_id, d.seq) for d in dispatches], failed) == ([(held, 2)], 0)
    assert row(database, held).status == "RETRY"
    assert database.run(lambda conn: callbacks.claim(conn, held, 2, now=T0 + 60 * SECOND)).attempt == 2
    assert expire(max_attempts=2, cutoff=T0 + 90 * SECOND) == ([], 1)
    assert (row(database, held).status, row(database, held).last_error) == ("FAILED", "vt")


def test_the_armed_dispatch_deferred_beyond_the_horizon_is_parked_for_the_reconciler(database: Database) -> None:
    job_id = with_callback(database, "parked")
    claim(database, job_id)
    assert database.run(lambda conn: claims.succeed(conn, job_id, 1, now=T0))
    armed_as_before_0010(database, job_id)
    later = T0 + 3600 * SECOND
    assert database.run(lambda conn: callbacks.park(conn, job_id, callbacks.ARMED_SEQ, now=T0, due_at=later))
    parked = row(database, job_id)
    assert (parked.dispatch_seq, parked.next_attempt_at) == (-1, later)
    # Its message is gone: only the reconciler's next dispatch claims it, once due.
    assert database.run(lambda conn: callbacks.claim(conn, job_id, callbacks.ARMED_SEQ, now=later)) is None
    candidates = database.run(
        lambda conn: callback_recovery.waiting_candidates(conn, overdue_before=later, schedule_until=later, limit=10)
    )
    assert candidates == [(job_id, -1, later)]
