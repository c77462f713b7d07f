"""The trigger-kept status counters agree with `SELECT status, count(*)` after every kind of change,
including concurrent writers on PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from ledger import bulk_retry, claims, intake, maintenance, queries, transitions
from ledger.schema import jobs
from ledger.states import Outcome, Status
from tests.ledger.conftest import SECOND, T0, claim, notification, submit

VISIBILITY = timedelta(seconds=60)


def assert_counters_match(database, *, now=T0) -> queries.QueueStats:
    """The stats' counts equal a full count, and the average attempts of successes equals the real mean."""

    def read(conn):
        stats = queries.queue_stats(conn, now=now)
        exact = queries.count_by_status(conn)
        mean = conn.execute(select(func.avg(jobs.c.attempts)).where(jobs.c.status == "SUCCESS")).scalar()
        return stats, exact, mean

    stats, exact, mean = database.run(read, transaction=True)
    assert stats.counts == exact
    assert stats.avg_attempts_success == pytest.approx(float(mean or 0), abs=1e-4)
    return stats


def test_counters_follow_every_kind_of_transition(database):
    step = iter(range(1000))

    def later():
        return T0 + next(step) * SECOND

    assert assert_counters_match(database).counts == dict.fromkeys(Status, 0)

    # intake, and a replay that writes nothing
    a, b, c, d, e, f = (submit(database, key, now=T0, max_attempts=2) for key in "abcdef")
    g = submit(database, "g", now=T0, dispatch_now=False, max_attempts=1)
    database.run(lambda conn: intake.accept(conn, notification("a", max_attempts=2), now=later(), dispatch_now=True))
    assert assert_counters_match(database).counts[Status.PENDING] == 7

    # claim, claim_many
    claim(database, a, now=later())
    database.run(lambda conn: claims.claim_many(conn, [(b, 1), (c, 1), (d, 1)], now=later(), worker="w"))
    assert assert_counters_match(database).counts[Status.PROCESSING] == 4

    # succeed (single and many), after a retry so that success attempts are not all 1
    retry = database.run(lambda conn: transitions.schedule_retry(conn, a, 1, now=later(), due_at=T0, error="x"))
    assert_counters_match(database)
    claim(database, a, now=later(), seq=retry.seq)
    database.run(lambda conn: claims.succeed(conn, a, 2, now=later()))
    assert_counters_match(database)
    database.run(lambda conn: claims.succeed_many(conn, [(b, 1)], now=later()))
    stats = assert_counters_match(database)
    assert (stats.counts[Status.SUCCESS], stats.avg_attempts_success) == (2, 1.5)

    # fail
    database.run(lambda conn: transitions.fail(conn, c, 1, now=later(), outcome=Outcome.PERMANENT_ERROR, error="550"))
    assert assert_counters_match(database).counts[Status.FAILED] == 1

    # expire to retry, then to failed
    claim(database, g, now=T0)
    database.run(
        lambda conn: transitions.expire(
            conn, [(d, 1), (g, 1)], now=T0 + VISIBILITY * 2, cutoff=T0 + VISIBILITY, error="t"
        )
    )
    stats = assert_counters_match(database)
    assert (stats.counts[Status.RETRY], stats.counts[Status.FAILED]) == (1, 2)

    # cancel from PENDING and from RETRY
    database.run(lambda conn: transitions.cancel(conn, e, scope="", now=later()))
    assert_counters_match(database)
    database.run(lambda conn: transitions.cancel(conn, d, scope="", now=later()))
    assert assert_counters_match(database).counts[Status.CANCELLED] == 2

    # redispatch (no status change), manual retry, bulk retry
    database.run(lambda conn: transitions.redispatch(conn, [(f, 1)], now=later()))
    assert_counters_match(database)
    database.run(lambda conn: transitions.manual_retry(conn, c, now=later(), extra_attempts=2))
    assert assert_counters_match(database).counts[Status.FAILED] == 1
    database.run(
        lambda conn: bulk_retry.retry_failed(
            conn, bulk_retry.FailedJobs(failed_before=T0 + timedelta(days=1)), now=later(), extra_attempts=1, limit=10
        )
    )
    stats = assert_counters_match(database)
    assert (stats.counts[Status.FAILED], stats.counts[Status.PENDING]) == (0, 3)

    # prune deletes finished jobs: the counters go down with them
    pruned = database.run(
        lambda conn: maintenance.prune(
            conn, finished_before=T0 + timedelta(days=3), now=T0 + timedelta(days=3), limit=3
        )
    )
    assert pruned == 3
    stats = assert_counters_match(database, now=T0 + timedelta(days=3))
    assert stats.counts[Status.SUCCESS] + stats.counts[Status.CANCELLED] == 1
    database.run(
        lambda conn: maintenance.prune(
            conn, finished_before=T0 + timedelta(days=3), now=T0 + timedelta(days=3), limit=3
        )
    )
    stats = assert_counters_match(database, now=T0 + timedelta(days=3))
    assert (stats.counts[Status.SUCCESS], stats.counts[Status.CANCELLED], stats.avg_attempts_success) == (0, 0, 0.0)
    assert sum(stats.counts.values()) == 3


def test_counters_stay_right_when_a_transaction_changes_many_jobs_and_rolls_back(database):
    ids = [submit(database, f"k{i}", max_attempts=1) for i in range(6)]
    for job_id in ids:
        claim(database, job_id)

    class Abort(Exception):
        pass

    def complete_then_abort(conn):
        claims.succeed_many(conn, [(j, 1) for j in ids[:3]], now=T0 + SECOND)
        transitions.fail(conn, ids[3], 1, now=T0 + SECOND, outcome=Outcome.TRANSIENT_ERROR, error="x")
        raise Abort

    with pytest.raises(Abort):
        database.run(complete_then_abort, transaction=True)
    assert assert_counters_match(database).counts[Status.PROCESSING] == 6

    def complete(conn):
        claims.succeed_many(conn, [(j, 1) for j in ids[:3]], now=T0 + SECOND)
        transitions.fail(conn, ids[3], 1, now=T0 + SECOND, outcome=Outcome.TRANSIENT_ERROR, error="x")
        transitions.expire(conn, [(ids[4], 1)], now=T0 + VISIBILITY * 2, cutoff=T0 + VISIBILITY, error="t")

    database.run(complete, transaction=True)
    stats = assert_counters_match(database)
    assert (stats.counts[Status.SUCCESS], stats.counts[Status.FAILED], stats.counts[Status.PROCESSING]) == (3, 2, 1)


def test_the_oldest_due_age_counts_only_waiting_jobs_that_are_due(database):
    submit(database, "due", now=T0)
    submit(database, "later", now=T0, send_at=T0 + timedelta(hours=1))
    held = submit(database, "held", now=T0 - timedelta(hours=2))
    claim(database, held, now=T0 - timedelta(hours=2))

    stats = assert_counters_match(database, now=T0 + 30 * SECOND)
    assert stats.oldest_due_age == pytest.approx(30.0)
    assert assert_counters_match(database, now=T0 - SECOND).oldest_due_age == 0.0


def test_eight_concurrent_writers_on_postgresql_lose_no_counter_update_and_do_not_deadlock(postgres_db):
    jobs_total, threads_total = 200, 8
    start = threading.Barrier(threads_total)
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            start.wait()
            for n in range(index, jobs_total, threads_total):
                now = T0 + n * SECOND
                request = notification(f"job-{n}", max_attempts=3)

                def deliver(conn, request=request, now=now):
                    created = intake.accept(conn, request, now=now, dispatch_now=True)
                    claimed = claims.claim(conn, created.job_id, created.dispatch_seq, now=now, worker=f"t{index}")
                    assert claimed is not None
                    assert claims.succeed(conn, claimed.id, claimed.attempt, now=now + SECOND)

                # Half as one transaction, half as the service runs it: one autocommitted statement each.
                if n % 2:
                    postgres_db.run(deliver, transaction=True)
                else:
                    postgres_db.run(deliver)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(threads_total)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert not any(thread.is_alive() for thread in threads), "writers hung (deadlock?)"
    assert errors == []
    stats = assert_counters_match(postgres_db)
    assert stats.counts[Status.SUCCESS] == jobs_total
    assert stats.avg_attempts_success == 1.0
    assert sum(stats.counts.values()) == jobs_total
