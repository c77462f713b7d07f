"""Through PgBouncer in transaction mode (Debian's 1.18 cannot track prepared statements): with
`prepared_statements=False` (`WJP_PREPARED_STATEMENTS=false`), intake and the workers' hot path work while many
clients share two server connections."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from actors.settings import Settings
from ledger import claims, intake
from ledger.database import Database
from ledger.schema import jobs
from ledger.states import Status
from tests.conftest import reset_ledger
from tests.ledger.conftest import T0, WORKER, notification
from tests.pgbouncer import PgBouncer, running_pgbouncer

THREADS = 6
JOBS_PER_THREAD = 15


@pytest.fixture
def pgbouncer(postgres_server_url: str) -> Iterator[PgBouncer]:
    yield from running_pgbouncer(postgres_server_url)


def deliver_jobs(database: Database, prefix: str) -> None:
    """What the API and a worker do for each job: intake, then the batched claim and success on a kept connection,
    each statement repeated often enough that psycopg would prepare it on its own."""
    for n in range(JOBS_PER_THREAD):
        accepted = database.run(
            lambda conn, n=n: intake.accept(conn, notification(f"{prefix}-{n}"), now=T0, dispatch_now=True)
        )
        job = accepted.job_id
        seq = database.run(
            lambda conn, job=job: conn.execute(select(jobs.c.dispatch_seq).where(jobs.c.id == job)).scalar_one()
        )
        claimed = database.run(
            lambda conn, job=job, seq=seq: claims.claim_many(conn, [(job, seq)], now=T0, worker=WORKER), kept=True
        )
        assert claimed[0] is not None
        done = database.run(lambda conn, job=job: claims.succeed_many(conn, [(job, 1)], now=T0), kept=True)
        assert done == [True]


def test_the_ledger_runs_through_pgbouncer_in_transaction_mode_without_prepared_statements(pgbouncer):
    settings = Settings.from_env({"DATABASE_URL": pgbouncer.url, "WJP_PREPARED_STATEMENTS": "false"})
    database = Database(
        settings.database_url, pool_size=THREADS, kept=THREADS, prepared_statements=settings.prepared_statements
    )
    reset_ledger(database)
    errors: list[BaseException] = []

    def work(prefix: str) -> None:
        try:
            deliver_jobs(database, prefix)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(uuid.uuid4().hex,)) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    statuses = database.run(lambda conn: conn.execute(select(jobs.c.status)).scalars().all())
    assert statuses == [Status.SUCCESS.value] * (THREADS * JOBS_PER_THREAD)
    database.dispose()


def test_prepared_statements_are_on_unless_wjp_prepared_statements_says_false():
    assert Settings.from_env({}).prepared_statements is True
    assert Settings.from_env({"WJP_PREPARED_STATEMENTS": "false"}).prepared_statements is False


def test_without_prepared_statements_a_kept_connection_prepares_nothing_and_sets_nothing(postgres_server_url):
    database = Database(postgres_server_url, pool_size=1, kept=1, prepared_statements=False)
    job = database.run(lambda conn: intake.accept(conn, notification("unprepared"), now=T0, dispatch_now=True)).job_id

    def claim_then_look(conn):
        for _ in range(10):  # past psycopg's threshold for preparing on its own
            claims.claim_many(conn, [(job, 1)], now=T0, worker=WORKER)
        prepared = conn.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar_one()
        return prepared, conn.exec_driver_sql("SHOW plan_cache_mode").scalar_one()

    # Behind a pooler in transaction mode a session setting would stay with some server connection, not this one.
    assert database.run(claim_then_look, kept=True) == (0, "auto")
    database.dispose()
