"""Shared fixtures: a migrated ledger on real PostgreSQL and on SQLite, and real Redis with a queue of
its own per test. Without the servers (or a tool, a browser, an IPv6 loopback) the tests skip, except under CI=true,
where every skip, however raised, is a failure."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from actors.broker import NAMESPACE, Dispatcher, make_broker
from ledger.database import Database, normalize_url
from ledger.migrate import upgrade
from ledger.schema import COUNTER_SLOTS

POSTGRES_URL = os.environ.get("WJP_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("WJP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip the test when something it needs from the machine is missing; under CI=true, where everything must be
    present, `pytest_runtest_makereport` turns the skip into a failure."""
    pytest.skip(reason)


def _failed_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"CI=true and {reason.removeprefix('Skipped: ')}"


# Any skip, not only those through `unavailable`: a `skipif` mark, an `importorskip` or a bare `pytest.skip` would
# otherwise hide an untested feature in CI as quietly as a missing server. Expected failures (xfail) are not skips.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        _failed_in_ci(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped:
        _failed_in_ci(report)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A database of our own on the PostgreSQL server, created for this run and dropped after it."""
    admin_url = normalize_url(POSTGRES_URL)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"wjp_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        unavailable(f"PostgreSQL at {POSTGRES_URL} is unreachable: {str(exc).splitlines()[0]}")
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    upgrade(Database(url, pool_size=1))
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def reset_ledger(database: Database) -> None:
    def wipe(conn) -> None:
        if database.dialect == "postgresql":
            conn.execute(text("TRUNCATE jobs, attempts, callbacks, api_keys, destinations"))
        else:
            conn.execute(text("DELETE FROM attempts"))
            conn.execute(text("DELETE FROM jobs"))
            conn.execute(text("DELETE FROM api_keys"))
            conn.execute(text("DELETE FROM destinations"))
        conn.execute(text("DELETE FROM job_counts"))
        conn.execute(text("INSERT INTO job_counts (slot) VALUES " + ", ".join(f"({i})" for i in range(COUNTER_SLOTS))))

    database.run(wipe, transaction=True)


@pytest.fixture
def postgres_db(postgres_server_url: str) -> Iterator[Database]:
    database = Database(postgres_server_url, pool_size=20)
    reset_ledger(database)
    yield database
    database.dispose()


@pytest.fixture
def sqlite_db(tmp_path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    upgrade(database)
    yield database
    database.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest) -> Database:
    """The ledger, once on PostgreSQL and once on SQLite."""
    return request.getfixturevalue("postgres_db" if request.param == "postgresql" else "sqlite_db")


@pytest.fixture(scope="session")
def redis_server_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {REDIS_URL} is unreachable: {exc}")
    return REDIS_URL


@pytest.fixture
def queue_name(redis_server_url: str) -> Iterator[str]:
    """A queue no other test uses; its keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    delete_queue_keys(redis_server_url, name)


def delete_queue_keys(redis_url: str, queue: str) -> None:
    """Delete every Redis key of `queue` (its list, bodies, delay queue, acks)."""
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{NAMESPACE}:*{queue}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def dispatcher(redis_server_url: str, queue_name: str) -> Dispatcher:
    return Dispatcher(make_broker(redis_server_url), queue_name)


def settings_env(database: Database, redis_url: str, queue: str, **overrides: str) -> dict[str, str]:
    """An environment for `Settings.from_env` pointing at the test's ledger, Redis and queue."""
    env = {
        "DATABASE_URL": database.engine.url.render_as_string(hide_password=False),
        "REDIS_URL": redis_url,
        "WJP_QUEUE": queue,
        "WJP_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    env.update(overrides)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_redis(port: int, timeout: float = 10.0) -> None:
    """Return once the redis-server on `port` answers PING; raise its last error after `timeout` seconds."""
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()


class RedisProcess:
    """A redis-server of the test's own on a free port, so that it can be flushed, stopped and started."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_redis(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def shutdown_keeping_data(self) -> None:
        """Stop as an operator does, data kept (SHUTDOWN SAVE): the next `start` loads it again."""
        assert self.process is not None
        # No retries: the server closes the connection as it goes, and that is the answer.
        client = redis.Redis(port=self.port, socket_timeout=10, retry=Retry(NoBackoff(), 0))
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(save=True)
        client.close()
        self.process.wait(timeout=30)
        self.process = None

    def restart_keeping_data(self, down_for: float = 0.0) -> None:
        """`shutdown_keeping_data`, `down_for` seconds of outage, `start`."""
        self.shutdown_keeping_data()
        time.sleep(down_for)
        self.start()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not on PATH")
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    server.stop()
