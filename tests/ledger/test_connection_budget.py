"""How many PostgreSQL connections a process opens: never more than its `Database` states, however many of its threads
ask at once, counted by the server itself (pg_stat_activity). A fleet's max_connections is sized from these figures
(README.md, "Running in production")."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from actors.settings import Settings
from ledger.database import Database
from service.cli import make_reconciler

ROOT = Path(__file__).resolve().parents[2]
#: Long enough that the threads' statements overlap whatever the machine's load: each holds its connection this long.
HOLD = "SELECT pg_sleep(0.4)"


class ConnectionCounter:
    """Polls pg_stat_activity from a connection of its own and keeps the most sessions of the database seen at once,
    leaving out those that were there before it started."""

    def __init__(self, url: str) -> None:
        self._admin = psycopg.connect(url, autocommit=True)
        self._before = self._sessions()
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._watch)

    def _sessions(self) -> set[int]:
        rows = self._admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return {pid for (pid,) in rows}

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, len(self._sessions() - self._before))

    def __enter__(self) -> ConnectionCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._admin.close()


def run_at_once(tasks: list[Callable[[], object]]) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(task: Callable[[], object]) -> None:
        try:
            task()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(task,)) for task in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def test_threads_beyond_the_budget_wait_for_a_connection_and_the_process_never_holds_more_than_it_states(
    postgres_server_url,
):
    database = Database(postgres_server_url, pool_size=3, transactions=2, kept=1)
    assert database.max_connections == 6

    def statement() -> None:
        database.run(lambda conn: conn.exec_driver_sql(HOLD))

    def transaction() -> None:
        database.run(lambda conn: conn.exec_driver_sql(HOLD), transaction=True)

    def keeper() -> None:
        for _ in range(3):
            database.run(lambda conn: conn.exec_driver_sql(HOLD), kept=True)

    try:
        with ConnectionCounter(libpq(postgres_server_url)) as counter:
            # Three times as many threads as there are connections for statements and for transactions.
            errors = run_at_once([statement] * 9 + [transaction] * 6 + [keeper])
    finally:
        database.dispose()
    assert errors == []
    # Every pool served as many threads at once as it states, and none more.
    assert counter.peak == database.max_connections


def test_the_reconciler_and_each_worker_process_state_their_budgets(postgres_server_url, redis_server_url):
    env = {"DATABASE_URL": postgres_server_url, "REDIS_URL": redis_server_url}
    assert make_reconciler(Settings.from_env(env)).database.max_connections == 2
    # What a Dramatiq process of `wjp worker --threads 3` boots with: a connection per thread, one for transactions
    # and the batcher's kept one.
    worker = subprocess.run(
        [sys.executable, "-c", "import actors.worker as w; print(w.boot().database.max_connections)"],
        env={**os.environ, **env, "WJP_WORKER_THREADS": "3"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.stdout.split() == ["5"], worker.stderr


@pytest.mark.parametrize("sizes", [{"pool_size": 0}, {"pool_size": 2, "transactions": 0}, {"kept": -1}])
def test_a_budget_of_no_connections_is_refused_rather_than_read_as_no_limit(postgres_server_url, sizes):
    with pytest.raises(ValueError, match="must be >= 1"):
        Database(postgres_server_url, **sizes)
