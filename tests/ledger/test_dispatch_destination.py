"""Every dispatch the ledger makes carries its job's destination, which its message takes to the worker."""

from __future__ import annotations

from ledger import bulk_retry, intake, transitions
from ledger.states import Outcome
from tests.ledger.conftest import SECOND, T0, claim, job_row, notification, submit

DESTINATION = "webhook:hooks.example.com:443"


def test_a_created_job_hands_its_destination_to_the_dispatch_sent_at_intake(database):
    result = database.run(
        lambda conn: intake.accept(
            conn, notification("k", destination=DESTINATION), now=T0, dispatch_now=True
        )
    )
    assert result.destination == DESTINATION

    batch = database.run(
        lambda conn: intake.accept_many(
            conn, [intake.Accepting(notification("k2", destination=DESTINATION), T0, dispatch_now=True)]
        )
    )
    created = batch[0] or database.run(
        lambda conn: intake.accept(conn, notification("k2", destination=DESTINATION), now=T0, dispatch_now=True)
    )
    assert created.destination == DESTINATION




def test_every_transition_that_dispatches_carries_the_jobs_destination(database):
    def pending(key: str, max_attempts: int = 3):
        return submit(database, key, destination=DESTINATION, max_attempts=max_attempts)

    retrying = pending("retry")
    claim(database, retrying)
    scheduled = database.run(
        lambda conn: transitions.schedule_retry(conn, retrying, 1, now=T0, due_at=T0 + SECOND, error="503")
    )

    expiring = pending("expire")
    claim(database, expiring)
    expired, _ = database.run(
        lambda conn: transitions.expire(conn, [(expiring, 1)], now=T0 + 100 * SECOND, cutoff=T0 + SECOND, error="t")
    )

    lost = pending("lost")
    redispatched = database.run(lambda conn: transitions.redispatch(conn, [(lost, 1)], now=T0))

    failed = pending("failed")
    claim(database, failed)
    database.run(
        lambda conn: transitions.fail(conn, failed, 1, now=T0, outcome=Outcome.PERMANENT_ERROR, error="no")
    )
    retried = database.run(lambda conn: transitions.manual_retry(conn, failed, now=T0, extra_attempts=1))

    bulk = pending("bulk")
    claim(database, bulk)
    database.run(lambda conn: transitions.fail(conn, bulk, 1, now=T0, outcome=Outcome.PERMANENT_ERROR, error="no"))
    in_bulk = database.run(
        lambda conn: bulk_retry.retry_failed(
            conn, bulk_retry.FailedJobs(failed_before=T0 + SECOND), now=T0 + SECOND, extra_attempts=1, limit=10
        )
    )

    dispatches = [scheduled, *expired, *redispatched, retried, *in_bulk]
    assert [d.job_id for d in dispatches] == [retrying, expiring, lost, failed, bulk]
    assert {d.destination for d in dispatches} == {DESTINATION}
    assert job_row(database, lost).destination == DESTINATION
