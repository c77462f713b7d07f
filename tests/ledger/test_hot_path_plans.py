"""The hot path's prepared statements read `jobs` by key, whatever the table looked like when their plan was made.

A kept connection plans each statement once (a generic plan, `ledger.database`) and keeps that plan until the next
ANALYZE; made on an empty or just-truncated `jobs` (a fresh install, the fixture here, every `make bench` run), a
plan that scans or hashes the table grows dearer with every row the table gains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ledger import claims, intake
from ledger.database import Database
from ledger.intake import Accepting
from tests.ledger.conftest import T0, WORKER, notification

#: Rows the table holds when the statements are measured, all added after their plans were made.
FILL = 500
#: Rows a statement may read per job of its own: the job by key, the unique key's check, the triggers' reads (the
#: foreign key of an attempt row). A plan that scans or hashes `jobs` reads all FILL.
PER_JOB = 8


def group(tag: str, size: int) -> list[Accepting]:
    return [Accepting(notification(f"{tag}-{i}"), T0, True) for i in range(size)]


def rows_fetched(database: Database, operation: Callable[[Any], object]) -> int:
    """Rows of `jobs` that `operation` read (sequentially or through an index) on the kept connection, in a
    transaction rolled back afterwards."""

    def measured(conn: Any) -> int:
        driver = conn.connection.driver_connection
        driver.execute("BEGIN")
        try:
            operation(conn)
            (fetched,) = driver.execute(
                "SELECT seq_tup_read + idx_tup_fetch FROM pg_stat_xact_user_tables WHERE relname = 'jobs'"
            ).fetchone()
        finally:
            driver.execute("ROLLBACK")
        return fetched

    return database.run(measured, kept=True)


def planned_on_an_empty_table_then_filled(database: Database) -> list[Accepting]:
    """Each hot-path statement run once on the kept connection while `jobs` is empty (the fixture truncated it),
    then FILL more rows; returns 4 waiting jobs, dispatched once."""
    first = group("first", 2)
    pairs = [(item.job_id, 1) for item in first]
    database.run(lambda conn: intake.accept_many(conn, first), kept=True)
    database.run(lambda conn: claims.claim_many(conn, pairs, now=T0, worker=WORKER), kept=True)
    database.run(lambda conn: claims.succeed_many(conn, pairs, now=T0), kept=True)
    for n in range(FILL // 100):
        database.run(lambda conn, n=n: intake.accept_many(conn, group(f"fill-{n}", 100)), kept=True)
    waiting = group("waiting", 4)
    database.run(lambda conn: intake.accept_many(conn, waiting), kept=True)
    return waiting


def test_a_group_insert_planned_on_an_empty_table_reads_only_its_own_ids(postgres_db):
    planned_on_an_empty_table_then_filled(postgres_db)
    probe = group("probe", 4)

    fetched = rows_fetched(postgres_db, lambda conn: intake.accept_many(conn, probe))

    assert fetched <= PER_JOB * len(probe) < FILL


def test_claims_and_successes_planned_on_an_empty_table_read_only_their_jobs(postgres_db):
    waiting = planned_on_an_empty_table_then_filled(postgres_db)
    pairs = [(item.job_id, 1) for item in waiting]

    def claim_then_succeed(conn: Any) -> None:
        assert all(claims.claim_many(conn, pairs, now=T0, worker=WORKER))
        assert all(claims.succeed_many(conn, pairs, now=T0))

    assert rows_fetched(postgres_db, claim_then_succeed) <= 2 * PER_JOB * len(pairs) < FILL


def index_scans(database: Database, operation: Callable[[Any], object]) -> int:
    """Index scans of `jobs` that `operation` started on the kept connection, in a transaction rolled back."""

    def measured(conn: Any) -> int:
        driver = conn.connection.driver_connection
        count = "SELECT idx_scan FROM pg_stat_xact_user_tables WHERE relname = 'jobs'"
        driver.execute("BEGIN")
        try:
            (before,) = driver.execute(count).fetchone()
            operation(conn)
            (after,) = driver.execute(count).fetchone()
        finally:
            driver.execute("ROLLBACK")
        return after - before

    return database.run(measured, kept=True)


def test_a_group_looks_up_by_id_only_the_jobs_its_insert_skipped(postgres_db):
    """A row the INSERT wrote cannot have been there before it: only the rows it skipped are looked up by id (a
    retried statement's own rows are among those). Every row costs one scan besides: the INSERT's check of its key."""
    planned_on_an_empty_table_then_filled(postgres_db)
    taken = group("taken", 3)
    postgres_db.run(lambda conn: intake.accept_many(conn, taken), kept=True)
    fresh, mixed = group("new", 50), taken + group("more", 50)

    assert index_scans(postgres_db, lambda conn: intake.accept_many(conn, fresh)) == len(fresh)
    assert index_scans(postgres_db, lambda conn: intake.accept_many(conn, mixed)) == len(mixed) + len(taken)
