"""`AsyncDatabase.run` on real PostgreSQL servers: the hot path's group INSERT through psycopg's async driver rides
over a connection the server dropped, a server that stays stopped is `LedgerUnavailable` (whether the loop had a
connection or not), it serves again once the server is back, and an error that is not about the connection is
raised as it is."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from ledger.async_database import AsyncDatabase
from ledger.database import Database
from ledger.errors import LedgerUnavailable
from ledger.intake import Accepting, Intake, IntakeResult, accept_many_async
from tests.ledger.conftest import T0, job_row, notification
from tests.ledger.test_database import drop_every_connection_of


async def accept(ledger: AsyncDatabase, key: str) -> IntakeResult | None:
    item = Accepting(notification(key), T0, True)
    return (await ledger.run(lambda conn: accept_many_async(conn, [item])))[0]


async def backend_pid(conn: psycopg.AsyncConnection) -> int:
    row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
    assert row is not None
    return int(row[0])


def test_a_dropped_connection_is_replaced_once_and_the_group_recorded(postgres_db: Database):
    ledger = AsyncDatabase(postgres_db)

    async def scenario() -> tuple[IntakeResult | None, IntakeResult | None, int, int]:
        first = await accept(ledger, "a-1")
        before = await ledger.run(backend_pid)
        assert drop_every_connection_of(postgres_db) >= 1
        second = await accept(ledger, "a-2")
        after = await ledger.run(backend_pid)
        await ledger.close()
        return first, second, before, after

    first, second, before, after = asyncio.run(scenario())
    assert first is not None and second is not None
    assert first.outcome is second.outcome is Intake.CREATED
    assert job_row(postgres_db, second.job_id) is not None
    assert before != after


def test_a_server_that_stays_stopped_is_an_outage_and_is_served_again_once_back(private_ledger, private_cluster):
    ledger = AsyncDatabase(private_ledger)

    async def during_outage() -> None:
        await accept(ledger, "o-1")  # the loop's connection, which the stop kills
        private_cluster.shut_down()
        with pytest.raises(LedgerUnavailable):
            await accept(ledger, "o-2")  # a dead connection, then a refused one
        with pytest.raises(LedgerUnavailable):
            await accept(ledger, "o-2")  # no connection: refused at once

    async def after_outage() -> IntakeResult | None:
        result = await accept(ledger, "o-2")
        await ledger.close()
        return result

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(during_outage())
        private_cluster.start()
        created = loop.run_until_complete(after_outage())
    finally:
        loop.close()
    assert created is not None and created.outcome is Intake.CREATED


def test_a_statement_error_is_raised_as_it_is_not_as_an_outage(postgres_db: Database):
    ledger = AsyncDatabase(postgres_db)

    async def broken_sql() -> None:
        try:
            await ledger.run(lambda conn: conn.execute("SELECT no_such_column FROM jobs"))
        finally:
            await ledger.close()

    with pytest.raises(psycopg.errors.UndefinedColumn):
        asyncio.run(broken_sql())


def test_sqlite_has_no_async_ledger(sqlite_db: Database):
    assert AsyncDatabase.of(sqlite_db) is None
