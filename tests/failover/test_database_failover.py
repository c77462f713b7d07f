"""`DATABASE_URL` naming a primary and its standby: the same `Database` follows a failover by itself, and a
connection to a server that turned read-only is dropped, never reused. Real servers: killed, promoted, fenced."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Connection, text

from ledger.database import Database, postgres
from ledger.errors import LedgerUnavailable
from tests.failover.conftest import PostgresPair
from tests.failover.servers import ReplicatedCluster


def server_port(database: Database, **options: bool) -> int:
    return database.run(lambda conn: conn.execute(text("SELECT inet_server_port()")).scalar_one(), **options)


def write(database: Database, value: int) -> int:
    """Insert `value` and answer the port of the server that took it."""

    def insert(conn: Connection) -> int:
        conn.execute(text("INSERT INTO notes (value) VALUES (:value)"), {"value": value})
        return conn.execute(text("SELECT inet_server_port()")).scalar_one()

    return database.run(insert, transaction=True)


def write_kept(database: Database, value: int) -> int:
    """As the hot path writes: through the driver, on the calling thread's kept connection."""

    def insert(conn: Connection) -> int:
        driver = postgres(conn)
        assert driver is not None
        driver.execute("INSERT INTO notes (value) VALUES (%s)", (value,))
        return driver.execute("SELECT inet_server_port()").fetchone()[0]

    return database.run(insert, kept=True)


def backend_of_writes(database: Database) -> int:
    """The server process of the connection `write` takes (the pool of transactions)."""
    return database.run(lambda conn: conn.execute(text("SELECT pg_backend_pid()")).scalar_one(), transaction=True)


def wait_writable(cluster: ReplicatedCluster) -> None:
    probe = Database(f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres", pool_size=1, kept=0)
    deadline = time.monotonic() + 30
    while probe.run(lambda conn: conn.execute(text("SELECT pg_is_in_recovery()")).scalar_one()):
        assert time.monotonic() < deadline, "the promoted standby never left recovery"
        time.sleep(0.05)
    probe.dispose()


def test_the_same_database_writes_to_the_promoted_standby_after_the_primary_is_killed(pg_pair: PostgresPair):
    database = Database(pg_pair.url, pool_size=2)
    database.run(lambda conn: conn.execute(text("CREATE TABLE notes (value INTEGER)")), transaction=True)
    assert write(database, 1) == write_kept(database, 2) == pg_pair.primary.port

    pg_pair.primary.kill()
    # No primary at all until the promotion: the standby refuses a read-write session.
    with pytest.raises(LedgerUnavailable):
        write(database, 3)
    pg_pair.standby.promote()
    wait_writable(pg_pair.standby)

    assert write(database, 4) == write_kept(database, 5) == pg_pair.standby.port
    values = database.run(lambda conn: conn.execute(text("SELECT value FROM notes ORDER BY value")).scalars().all())
    assert values == [1, 2, 4, 5]
    database.dispose()


@pytest.mark.parametrize("kept", [False, True], ids=["pooled", "kept"])
def test_a_connection_to_a_primary_fenced_read_only_is_dropped_and_the_call_goes_to_the_new_primary(
    pg_pair: PostgresPair, kept: bool
):
    database = Database(pg_pair.url, pool_size=2)
    database.run(lambda conn: conn.execute(text("CREATE TABLE notes (value INTEGER)")), transaction=True)
    writer = write_kept if kept else write
    assert writer(database, 1) == pg_pair.primary.port

    # The old primary still answers, read-only, while the standby takes over.
    pg_pair.primary.set_read_only(True)
    pg_pair.standby.promote()
    wait_writable(pg_pair.standby)

    assert writer(database, 2) == pg_pair.standby.port
    # Reads too now go to the new primary: nothing kept a connection to the old one.
    assert server_port(database) == server_port(database, kept=True) == pg_pair.standby.port
    database.dispose()


def test_a_server_turned_read_only_answers_ledger_unavailable_and_its_connection_is_not_reused(pg_pair: PostgresPair):
    database = Database(f"postgresql://postgres@127.0.0.1:{pg_pair.primary.port}/postgres", pool_size=1)
    database.run(lambda conn: conn.execute(text("CREATE TABLE notes (value INTEGER)")), transaction=True)
    backend = backend_of_writes(database)

    pg_pair.primary.set_read_only(True)
    with pytest.raises(LedgerUnavailable, match="read-only"):
        write(database, 1)
    pg_pair.primary.set_read_only(False)

    assert write(database, 2) == pg_pair.primary.port
    assert backend_of_writes(database) != backend
    database.dispose()
