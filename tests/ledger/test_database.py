"""`Database.run` on PostgreSQL when the hot path's statements go through the driver itself: a connection the
server dropped (its session ended, or the server restarted for real) is replaced once without the caller
noticing, a server that stays stopped is an outage, and an error that is not about the connection is not
mistaken for an outage."""

from __future__ import annotations

import re
import threading
import uuid

import psycopg
import pytest
from sqlalchemy import text

from ledger import claims, intake
from ledger.database import Database, array_literal, postgres
from ledger.errors import LedgerUnavailable
from ledger.intake import Intake
from ledger.states import Status
from tests.ledger.conftest import T0, job_row, notification


def drop_every_connection_of(database: Database) -> int:
    """What an idle-session timeout or an administrator's `pg_terminate_backend` does to the pooled connections,
    on a server that stays up (a real restart: `private_cluster`)."""
    with psycopg.connect(database.engine.url.set(drivername="postgresql").render_as_string(False)) as admin:
        return admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]


def test_the_hot_path_rides_over_connections_the_server_dropped(postgres_db):
    # Warm the pool, so that the statements below meet connections that died while they sat in it.
    created = postgres_db.run(lambda conn: intake.accept(conn, notification("k-1"), now=T0, dispatch_now=True))
    assert drop_every_connection_of(postgres_db) >= 1

    # Intake's INSERT, through the driver on a dead connection: replaced, and the request is recorded once.
    result = postgres_db.run(lambda conn: intake.accept(conn, notification("k-2"), now=T0, dispatch_now=True))
    assert result.outcome is Intake.CREATED

    drop_every_connection_of(postgres_db)
    claimed = postgres_db.run(
        lambda conn: claims.claim_many(conn, [(created.job_id, 1), (result.job_id, 1)], now=T0, worker="w")
    )
    assert [job.attempt for job in claimed if job is not None] == [1, 1]

    drop_every_connection_of(postgres_db)
    done = postgres_db.run(lambda conn: claims.succeed_many(conn, [(created.job_id, 1)], now=T0))
    assert done == [True]
    assert job_row(postgres_db, created.job_id).status == Status.SUCCESS
    assert job_row(postgres_db, result.job_id).status == Status.PROCESSING


def backend_pid(conn) -> int:
    return conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()


def test_a_server_that_stays_unreachable_is_an_outage_not_a_crash(private_ledger, private_cluster):
    # Pooled and kept connections to a server that then stops for good (until the end of the test).
    private_ledger.run(backend_pid)
    private_ledger.run(backend_pid, kept=True)
    private_cluster.shut_down()

    # The dead connection is met, the retry is refused: the caller hears of an outage, by whichever path.
    with pytest.raises(LedgerUnavailable):
        private_ledger.run(lambda conn: intake.accept(conn, notification("k-3"), now=T0, dispatch_now=True))
    with pytest.raises(LedgerUnavailable):
        private_ledger.run(
            lambda conn: claims.claim_many(conn, [(uuid.uuid4(), 1)], now=T0, worker="w"), kept=True
        )
    with pytest.raises(LedgerUnavailable):
        private_ledger.ping()

    # The same Database serves again once the server is back.
    private_cluster.start()
    created = private_ledger.run(lambda conn: intake.accept(conn, notification("k-3"), now=T0, dispatch_now=True))
    assert created.outcome is Intake.CREATED


def test_a_statement_error_through_the_driver_is_raised_as_it_is(postgres_db):
    def broken_sql(conn):
        return postgres(conn).execute("SELECT * FROM no_such_table").fetchall()

    with pytest.raises(psycopg.errors.UndefinedTable):
        postgres_db.run(broken_sql)
    # And the connection it ran on is still good for the next unit of work.
    assert postgres_db.run(lambda conn: conn.execute(text("SELECT 1")).scalar_one()) == 1


def test_arrays_sent_as_text_reach_postgresql_as_the_lists_they_were(postgres_db):
    ids = [uuid.uuid4() for _ in range(3)]
    with postgres_db.connect() as conn:
        driver = postgres(conn)
        assert driver is not None
        for values, cast in ((ids, "UUID[]"), ([1, 20, -3], "INTEGER[]"), ([], "UUID[]")):
            query = f"SELECT %(values)s::{cast}"
            assert driver.execute(query, {"values": array_literal(values)}, prepare=True).fetchone() == (values,)


def test_kept_connections_plan_their_statements_generically_and_the_others_as_postgresql_chooses(postgres_db):
    def plan_cache_mode(conn):
        return conn.execute(text("SHOW plan_cache_mode")).scalar_one()

    assert postgres_db.run(plan_cache_mode, kept=True) == "force_generic_plan"
    assert postgres_db.run(plan_cache_mode) == "auto"
    assert postgres_db.run(plan_cache_mode, transaction=True) == "auto"


def generic_plan(conn, statement, params) -> str:
    """The plan a kept connection made for `statement` (run once to prepare it), as EXPLAIN prints it."""
    driver = postgres(conn)
    statement.execute(driver, params).fetchall()
    name, count = driver.execute(
        "SELECT name, cardinality(parameter_types) FROM pg_prepared_statements ORDER BY prepare_time DESC LIMIT 1"
    ).fetchone()
    rows = driver.execute(f"EXPLAIN (COSTS OFF) EXECUTE {name}({', '.join(['NULL'] * count)})").fetchall()
    return "\n".join(row[0] for row in rows)


def test_kept_connections_find_the_hot_paths_rows_by_key_while_the_table_has_no_statistics(postgres_db):
    # The fixture's TRUNCATE leaves `jobs` as a fresh install has it: never analyzed, next to empty. A generic
    # plan made now is kept for the connection's life (until an ANALYZE), when the table holds millions of rows.
    a, b = uuid.uuid4(), uuid.uuid4()
    statements = {
        "claim": (claims._DRIVER_CLAIM, {"ids": [a], "seqs": [1]}),
        "success": (claims._DRIVER_SUCCEED, {"ids": [a], "attempts": [1]}),
        "success and claim": (
            claims._DRIVER_SUCCEED_AND_CLAIM,
            {"success_ids": [a], "attempts": [1], "claim_ids": [b], "seqs": [1]},
        ),
    }
    for name, (statement, params) in statements.items():
        params = {**params, "now": T0, "due_by": T0, "worker": "w", "token": uuid.uuid4()}
        plan = postgres_db.run(lambda conn, s=statement, p=params: generic_plan(conn, s, p), kept=True)
        assert "Seq Scan" not in plan, f"{name}:\n{plan}"
        # Each read of `jobs` goes by the asked ids (a scan of the whole primary key once passed for a key lookup).
        indexes = re.findall(r"Index (?:Only )?Scan (?:using|on) (\w+)", plan)
        assert indexes and set(indexes) == {"pk_jobs"}, f"{name}:\n{plan}"
        assert len(re.findall(r"Index Cond: \(id = ANY", plan)) == len(indexes), f"{name}:\n{plan}"


def test_a_kept_connection_serves_its_thread_again_rides_over_a_drop_and_is_closed_with_the_database(postgres_db):
    def backend(conn):
        return postgres(conn).execute("SELECT pg_backend_pid()").fetchone()[0]

    first = postgres_db.run(backend, kept=True)
    assert postgres_db.run(backend, kept=True) == first
    # Another thread keeps its own.
    other: list[int] = []
    thread = threading.Thread(target=lambda: other.append(postgres_db.run(backend, kept=True)))
    thread.start()
    thread.join()
    assert other[0] != first

    drop_every_connection_of(postgres_db)
    replaced = postgres_db.run(backend, kept=True)
    assert replaced != first
    created = postgres_db.run(
        lambda conn: intake.accept(conn, notification("k-kept"), now=T0, dispatch_now=True), kept=True
    )
    assert created.outcome is Intake.CREATED

    postgres_db.dispose()
    with psycopg.connect(postgres_db.engine.url.set(drivername="postgresql").render_as_string(False)) as admin:
        alive = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [[replaced, other[0]]])
        assert alive.fetchone()[0] == 0


def test_a_kept_connection_is_never_asked_for_a_transaction(postgres_db):
    with pytest.raises(ValueError, match="never in a transaction"):
        postgres_db.run(lambda conn: None, transaction=True, kept=True)


def test_after_a_restart_every_dead_pooled_connection_is_replaced_not_just_the_first_one_met(
    private_ledger, private_cluster
):
    # Several connections in the pool, as a busy API has, and a kept one: a restart of PostgreSQL kills them all.
    with private_ledger.connect() as a, private_ledger.connect() as b, private_ledger.connect() as c:
        before = {backend_pid(conn) for conn in (a, b, c)}
    before.add(private_ledger.run(backend_pid, kept=True))
    private_cluster.restart()

    # The first statement meets a dead connection and goes again: on a live one, not the next dead one.
    result = private_ledger.run(lambda conn: intake.accept(conn, notification("k-after"), now=T0, dispatch_now=True))
    assert result.outcome is Intake.CREATED
    again = private_ledger.run(lambda conn: intake.accept(conn, notification("k-after-2"), now=T0, dispatch_now=True))
    assert again.outcome is Intake.CREATED
    # The hot path's kept connection, through the driver, likewise.
    claimed = private_ledger.run(
        lambda conn: claims.claim_many(conn, [(result.job_id, 1)], now=T0, worker="w"), kept=True
    )
    assert [job.attempt for job in claimed if job is not None] == [1]
    assert private_ledger.run(backend_pid, kept=True) not in before
