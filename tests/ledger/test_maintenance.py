"""The reconciler's and pruner's queries on both databases: the right rows, in bounded batches, from the
partial indexes (checked on PostgreSQL's plans)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, text

from ledger import maintenance, queries, transitions
from ledger.schema import attempts, jobs
from ledger.states import Outcome, Status
from tests.ledger.conftest import SECOND, T0, attempt_rows, claim, job_in, job_row, submit

MINUTE = timedelta(minutes=1)
DAY = timedelta(days=1)


def expired_claims(database, *, cutoff, limit=100):
    return database.run(lambda conn: maintenance.expired_claims(conn, cutoff=cutoff, limit=limit))


def waiting_candidates(database, *, overdue_before, schedule_until, after=None, limit=100):
    return database.run(
        lambda conn: maintenance.waiting_candidates(
            conn, overdue_before=overdue_before, schedule_until=schedule_until, after=after, limit=limit
        )
    )


def prune(database, *, finished_before, now, limit=1000):
    return database.run(lambda conn: maintenance.prune(conn, finished_before=finished_before, now=now, limit=limit))


# --- expired claims ------------------------------------------------------------------------------------------


def test_expired_claims_are_the_processing_jobs_claimed_before_the_cutoff_oldest_first(database):
    cutoff = T0 + 10 * MINUTE
    # Claimed in an order unrelated to their claim times.
    middle, newest_expired, oldest, at_cutoff, after_cutoff = (submit(database, k) for k in "abcde")
    claim(database, middle, now=T0 + 5 * MINUTE)
    claim(database, newest_expired, now=cutoff - SECOND)
    claim(database, oldest, now=T0)
    claim(database, at_cutoff, now=cutoff)
    claim(database, after_cutoff, now=cutoff + MINUTE)
    # Rows that are not held, however old: waiting, finished, or taken back.
    submit(database, "waiting")
    done = job_in(database, Status.SUCCESS, "done")
    failed = job_in(database, Status.FAILED, "failed")
    retried = job_in(database, Status.RETRY, "retried")

    found = expired_claims(database, cutoff=cutoff)

    assert found == [(oldest, 1), (middle, 1), (newest_expired, 1)]
    assert not {done, failed, retried} & {job_id for job_id, _ in found}


def test_expired_claims_report_the_attempt_held_and_come_in_bounded_batches(database):
    ids = [submit(database, f"k{i}") for i in range(5)]
    for i, job_id in enumerate(ids):
        claim(database, job_id, now=T0 + i * SECOND)
    dispatch = database.run(lambda conn: transitions.schedule_retry(conn, ids[0], 1, now=T0, due_at=T0, error="x"))
    claim(database, ids[0], now=T0 + 10 * SECOND, seq=dispatch.seq)

    cutoff = T0 + MINUTE
    assert expired_claims(database, cutoff=cutoff, limit=2) == [(ids[1], 1), (ids[2], 1)]
    assert expired_claims(database, cutoff=cutoff, limit=10) == [(j, 1) for j in ids[1:]] + [(ids[0], 2)]
    assert expired_claims(database, cutoff=T0, limit=10) == []


# --- waiting candidates --------------------------------------------------------------------------------------


def test_waiting_candidates_are_dispatched_overdue_jobs_and_undispatched_jobs_due_before_the_horizon(database):
    now = T0 + 10 * MINUTE
    overdue_before, schedule_until = now - 10 * SECOND, now + MINUTE
    overdue = submit(database, "overdue", now=T0)
    in_grace = submit(database, "in-grace", now=now - 5 * SECOND)
    dispatched_future = submit(database, "dispatched-future", now=T0, send_at=now + 30 * SECOND)
    scheduled_soon = submit(database, "scheduled-soon", now=T0, send_at=now + 30 * SECOND, dispatch_now=False)
    scheduled_at_horizon = submit(database, "at-horizon", now=T0, send_at=schedule_until, dispatch_now=False)
    scheduled_later = submit(database, "scheduled-later", now=T0, send_at=now + 2 * MINUTE, dispatch_now=False)
    never_sent_overdue = submit(database, "never-sent", now=T0, dispatch_now=False)
    retrying = job_in(database, Status.RETRY, "retrying", now=T0)
    for status in (Status.PROCESSING, Status.SUCCESS, Status.FAILED, Status.CANCELLED):
        job_in(database, status, f"not-waiting-{status}", now=T0)

    found = waiting_candidates(database, overdue_before=overdue_before, schedule_until=schedule_until)

    by_id = {job_id: (seq, due) for job_id, seq, due in found}
    assert set(by_id) == {overdue, retrying, never_sent_overdue, scheduled_soon, scheduled_at_horizon}
    assert by_id[overdue] == (1, T0)
    assert by_id[retrying] == (2, T0)
    assert by_id[scheduled_soon] == (0, now + 30 * SECOND)
    assert by_id[never_sent_overdue] == (0, T0)
    assert not {in_grace, dispatched_future, scheduled_later} & set(by_id)
    assert [(due, job_id) for job_id, _, due in found] == sorted((due, job_id) for job_id, _, due in found)


def test_keyset_paging_over_waiting_candidates_visits_each_exactly_once(database):
    expected = set()
    for i in range(23):
        # Few distinct due times, so that many pages break inside a run of equal times.
        due = T0 + (i % 4) * SECOND
        job_id = submit(database, f"k{i}", now=due, dispatch_now=bool(i % 3))
        expected.add(job_id)
    job_in(database, Status.PROCESSING, "held", now=T0)

    seen: list[uuid.UUID] = []
    pages = 0
    after = None
    while True:
        page = waiting_candidates(
            database, overdue_before=T0 + MINUTE, schedule_until=T0 + MINUTE, after=after, limit=4
        )
        if not page:
            break
        pages += 1
        assert len(page) <= 4
        seen.extend(job_id for job_id, _, _ in page)
        last_id, _, last_due = page[-1]
        after = (last_due, last_id)

    assert pages == 6
    assert len(seen) == len(set(seen)) == 23
    assert set(seen) == expected


# --- prune ---------------------------------------------------------------------------------------------------


def test_prune_deletes_finished_jobs_completed_before_the_cutoff_with_their_attempts(database):
    now = T0 + 40 * DAY
    finished_before = now - 30 * DAY
    old = {status: job_in(database, status, f"old-{status}", now=T0) for status in Status}
    recently_done = job_in(database, Status.SUCCESS, "recent", now=now - DAY)
    young_key = job_in(database, Status.SUCCESS, "young", now=now - timedelta(hours=23))

    deleted = prune(database, finished_before=finished_before, now=now)

    assert deleted == 3
    for status, job_id in old.items():
        assert (job_row(database, job_id) is None) == (status in {Status.SUCCESS, Status.FAILED, Status.CANCELLED})
        if status in {Status.SUCCESS, Status.FAILED}:
            assert attempt_rows(database, job_id) == []
    assert job_row(database, recently_done) is not None and job_row(database, young_key) is not None
    assert len(attempt_rows(database, recently_done)) == 1
    orphans = database.run(
        lambda conn: conn.execute(
            select(func.count()).select_from(attempts).where(attempts.c.job_id.not_in(select(jobs.c.id)))
        ).scalar_one()
    )
    assert orphans == 0


def test_prune_keeps_an_idempotency_key_for_at_least_a_day_whatever_the_cutoff(database):
    now = T0 + DAY
    young = job_in(database, Status.SUCCESS, "young", now=T0 + SECOND)
    old_enough = job_in(database, Status.SUCCESS, "old", now=T0 - SECOND)

    assert prune(database, finished_before=now, now=now) == 1
    assert job_row(database, young) is not None
    assert job_row(database, old_enough) is None


def test_prune_never_deletes_a_waiting_or_processing_job_however_old(database):
    now = T0 + 365 * DAY
    live = [job_in(database, status, f"live-{status}", now=T0) for status in (Status.PENDING, Status.RETRY)]
    live.append(job_in(database, Status.PROCESSING, "held", now=T0))
    retried_by_hand = job_in(database, Status.FAILED, "retried", now=T0)
    database.run(lambda conn: transitions.manual_retry(conn, retried_by_hand, now=T0 + SECOND, extra_attempts=1))
    live.append(retried_by_hand)

    assert prune(database, finished_before=now, now=now) == 0
    assert all(job_row(database, job_id) is not None for job_id in live)
    assert len(attempt_rows(database, retried_by_hand)) == 1


def test_prune_works_in_bounded_batches(database):
    for i in range(5):
        job_id = submit(database, f"k{i}", now=T0)
        claim(database, job_id)
        database.run(
            lambda conn, job_id=job_id: transitions.fail(
                conn, job_id, 1, now=T0, outcome=Outcome.PERMANENT_ERROR, error="x"
            )
        )
    now = T0 + 2 * DAY

    batches = [prune(database, finished_before=now, now=now, limit=2) for _ in range(4)]

    assert batches == [2, 2, 1, 0]
    assert database.run(queries.count_by_status)[Status.FAILED] == 0


# --- query plans ---------------------------------------------------------------------------------------------


@contextmanager
def captured(conn) -> Iterator[list[tuple[str, Any]]]:
    """The SQL text and parameters of every statement `conn` executes inside the block."""
    statements: list[tuple[str, Any]] = []

    def record(_conn, _cursor, statement, parameters, _context, _executemany):
        statements.append((statement, parameters))

    event.listen(conn, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(conn, "before_cursor_execute", record)


def explain(conn, run) -> str:
    """The database's plan for the one statement `run(conn)` executes, with the same parameters."""
    with captured(conn) as statements:
        run(conn)
    [(statement, parameters)] = statements
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
        return "\n".join(row[3] for row in rows)
    return "\n".join(conn.exec_driver_sql("EXPLAIN " + statement, parameters).scalars().all())


def full_scan(plan: str) -> bool:
    """Whether the plan reads the whole jobs table (PostgreSQL: a Seq Scan; SQLite: a SCAN without an index)."""
    return "Seq Scan on jobs" in plan or any(line.strip() == "SCAN jobs" for line in plan.splitlines())


BULK_COLUMNS = (
    "id, scope, idempotency_key, payload_hash, recipient, channel, message, status, attempts, max_attempts, "
    "next_attempt_at, dispatch_seq, created_at, updated_at, completed_at"
)
BULK_POSTGRESQL = text(
    f"INSERT INTO jobs ({BULK_COLUMNS}) "
    "SELECT gen_random_uuid(), '', 'bulk-' || g, 'h', 'u@example.com', 'email', 'm', "
    "CASE WHEN g % 10 = 0 THEN 'FAILED' ELSE 'SUCCESS' END, 1, 5, "
    ":t - g * interval '1 second', 1, :t - g * interval '1 second', :t, :t "
    "FROM generate_series(:first, :first + 1999) AS g"
)
# SQLAlchemy stores SQLite times as 'YYYY-MM-DD HH:MM:SS.ffffff' text and UUIDs as 32 hex digits.
BULK_SQLITE = text(
    "WITH RECURSIVE g(n) AS (SELECT :first UNION ALL SELECT n + 1 FROM g WHERE n < :first + 1999) "
    f"INSERT INTO jobs ({BULK_COLUMNS}) "
    "SELECT lower(hex(randomblob(16))), '', 'bulk-' || n, 'h', 'u@example.com', 'email', 'm', "
    "CASE WHEN n % 10 = 0 THEN 'FAILED' ELSE 'SUCCESS' END, 1, 5, "
    ":t, 1, :t, :t, :t FROM g"
)


@pytest.fixture
def big_ledger(database):
    """20,000 finished jobs and a handful of live ones, analysed."""
    bulk = BULK_POSTGRESQL if database.dialect == "postgresql" else BULK_SQLITE
    t = T0 - DAY if database.dialect == "postgresql" else (T0 - DAY).strftime("%Y-%m-%d %H:%M:%S.%f")
    # In batches: the counter trigger updates one counter row per transaction, and a long chain of versions of
    # one row within one transaction makes each further update slower on PostgreSQL.
    for first in range(1, 20_000, 2_000):
        database.run(lambda conn, first=first: conn.execute(bulk, {"t": t, "first": first}))
    for i in range(5):
        submit(database, f"waiting-{i}", now=T0 + i * SECOND)
        job_in(database, Status.PROCESSING, f"held-{i}", now=T0 + i * SECOND)
    database.run(lambda conn: conn.exec_driver_sql("ANALYZE"))
    return database


def test_expired_claims_reads_the_partial_index_of_processing_jobs(big_ledger):
    plan = big_ledger.run(
        lambda conn: explain(conn, lambda c: maintenance.expired_claims(c, cutoff=T0 + MINUTE, limit=100))
    )
    assert "ix_jobs_processing_claimed_at" in plan, plan
    assert not full_scan(plan), plan
    assert len(big_ledger.run(lambda conn: maintenance.expired_claims(conn, cutoff=T0 + MINUTE, limit=100))) == 5


def test_waiting_candidates_reads_the_partial_index_of_waiting_jobs(big_ledger):
    def first_page(conn):
        return maintenance.waiting_candidates(
            conn, overdue_before=T0 + MINUTE, schedule_until=T0 + 2 * MINUTE, after=None, limit=100
        )

    def later_page(conn):
        return maintenance.waiting_candidates(
            conn, overdue_before=T0 + MINUTE, schedule_until=T0 + 2 * MINUTE, after=(T0, uuid.uuid4()), limit=100
        )

    for run in (first_page, later_page):
        plan = big_ledger.run(lambda conn, run=run: explain(conn, run))
        assert "ix_jobs_waiting_next_attempt_at" in plan, plan
        assert not full_scan(plan), plan
    assert len(big_ledger.run(first_page)) == 5


def test_queue_stats_does_not_scan_the_whole_ledger(big_ledger):
    plan = big_ledger.run(lambda conn: explain(conn, lambda c: queries.queue_stats(c, now=T0)))
    assert not full_scan(plan), plan
    assert "ix_jobs_waiting_next_attempt_at" in plan and "ix_jobs_processing_claimed_at" in plan, plan
    stats = big_ledger.run(lambda conn: queries.queue_stats(conn, now=T0 + MINUTE))
    assert stats.counts == big_ledger.run(queries.count_by_status)
    assert (stats.counts[Status.SUCCESS], stats.counts[Status.FAILED]) == (18_000, 2_000)
    assert (stats.counts[Status.PENDING], stats.counts[Status.PROCESSING]) == (5, 5)


def test_prune_racing_a_manual_retry_on_postgresql_never_deletes_the_job_brought_back_to_life(postgres_db):
    # A month-old FAILED job is retried by hand while a prune pass runs: the pass read the job as finished,
    # then waits for the retry's row lock. Once the retry commits, the job is PENDING and must survive.
    now = T0 + 40 * DAY
    job_id = job_in(postgres_db, Status.FAILED, "old-failure", now=T0)
    operator = postgres_db.engine.connect()
    operator.begin()
    assert transitions.manual_retry(operator, job_id, now=now, extra_attempts=3) is not None

    result: dict[str, Any] = {}

    def pass_of_the_pruner() -> None:
        try:
            result["deleted"] = prune(postgres_db, finished_before=now - 30 * DAY, now=now)
        except BaseException as exc:  # collected and asserted below
            result["error"] = exc

    pruner = threading.Thread(target=pass_of_the_pruner)
    pruner.start()
    try:
        waiting_on_the_lock(postgres_db, pruner)
    finally:
        operator.commit()
        operator.close()
    pruner.join(30)

    assert "error" not in result
    row = job_row(postgres_db, job_id)
    assert row is not None, f"prune deleted a job that a manual retry had made PENDING (deleted={result})"
    assert row.status == "PENDING"
    assert result["deleted"] == 0


def waiting_on_the_lock(database, thread: threading.Thread) -> None:
    """Return once another session of this database waits on a row lock (the thread blocked in its statement)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    )
    with database.engine.connect() as conn:
        for _ in range(100_000):
            if conn.execute(query).scalar_one() > 0:
                return
            if not thread.is_alive():
                return
            conn.rollback()
    raise AssertionError("the pruner never reached the row lock")
