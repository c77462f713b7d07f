"""The hot path's statements on psycopg's async driver, with `Database.run`'s mapping of outages."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg.errors import ReadOnlySqlTransaction

from ledger.database import _READ_ONLY_REPORTS, CONNECT_TIMEOUT, UNPREPARED, Database, _first_line
from ledger.errors import LedgerUnavailable

T = TypeVar("T")

AsyncDriver = psycopg.AsyncConnection[Any]


class AsyncDatabase:
    """One autocommit psycopg `AsyncConnection` per event loop, kept from one call to the next, for the driver-level
    statements of the hot path (`DriverStatement.execute_async`); PostgreSQL only (`of`). psycopg runs one
    statement at a time on a connection, so the callers of one loop take turns on it, as the intake groups do.

    It connects as `database`'s engines do (same hosts, `target_session_attrs`, adapters, prepared or not, the
    kept connections' plan settings) and counts as one more connection of the process."""

    def __init__(self, database: Database) -> None:
        engine = database.engine
        args, self._connect_kwargs = engine.dialect.create_connect_args(engine.url)
        assert not args, "psycopg's dialect passes everything by keyword"
        self._prepared = database.prepared_statements
        self._kept: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Kept] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, database: Database) -> AsyncDatabase | None:
        """An `AsyncDatabase` beside `database` on PostgreSQL; None on SQLite, whose calls stay on threads."""
        return cls(database) if database.dialect == "postgresql" else None

    async def run(self, operation: Callable[[AsyncDriver], Awaitable[T]]) -> T:
        """Await `operation` on this loop's connection, retrying once on a dropped or read-only one (as
        `Database.run`: a restarted server costs the caller nothing, a failover reaches the new primary); raise
        `LedgerUnavailable` when the server cannot be reached or is read-only still."""
        kept = self._kept.setdefault(asyncio.get_running_loop(), _Kept())
        for attempt in (1, 2):
            conn = await self._connection(kept)
            try:
                if any(conn.pgconn.parameter_status(name) == b"on" for name in _READ_ONLY_REPORTS):
                    raise ReadOnlySqlTransaction("the database server is read-only (a standby, or a demoted primary)")
                return await operation(conn)
            except ReadOnlySqlTransaction as exc:
                await kept.drop()
                if attempt == 2:
                    raise LedgerUnavailable(_first_line(exc)) from exc
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if not conn.broken:
                    raise LedgerUnavailable(_first_line(exc)) from exc
                await kept.drop()
                if attempt == 2:
                    raise LedgerUnavailable(_first_line(exc)) from exc
        raise AssertionError("unreachable")

    async def _connection(self, kept: _Kept) -> AsyncDriver:
        async with kept.connecting:
            if kept.connection is None or kept.connection.closed:
                try:
                    kept.connection = await self._connect()
                except psycopg.Error as exc:
                    raise LedgerUnavailable(_first_line(exc)) from exc
            return kept.connection

    async def _connect(self) -> AsyncDriver:
        options = {"connect_timeout": CONNECT_TIMEOUT, **({} if self._prepared else UNPREPARED)}
        conn = await psycopg.AsyncConnection.connect(**self._connect_kwargs, **options, autocommit=True)
        if self._prepared:
            # The plan settings of `Database`'s kept connections, for the same statements (see `_plan_by_key`).
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            await conn.execute("SET enable_seqscan = off")
        return conn

    async def close(self) -> None:
        """Close the connection of the running loop, if any."""
        kept = self._kept.pop(asyncio.get_running_loop(), None)
        if kept is not None:
            await kept.drop()


class _Kept:
    """A loop's connection, and the lock that keeps two of its callers from opening one each."""

    def __init__(self) -> None:
        self.connection: AsyncDriver | None = None
        self.connecting = asyncio.Lock()

    async def drop(self) -> None:
        conn, self.connection = self.connection, None
        if conn is not None:
            await conn.close()
