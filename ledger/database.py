"""Engines for the ledger's database, and the one place that turns driver failures into ledger errors."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.errors import ReadOnlySqlTransaction
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.sql.expression import ClauseElement

from ledger.errors import LedgerUnavailable

T = TypeVar("T")

#: Seconds a SQLite writer waits for the lock before giving up (then the API answers 503).
SQLITE_BUSY_TIMEOUT = 10.0
#: Seconds to wait for a PostgreSQL connection before the ledger counts as unreachable.
CONNECT_TIMEOUT = 5
#: psycopg's option for a connection that prepares nothing on the server, not even after repeated executions.
UNPREPARED = {"prepare_threshold": None}


def without_credentials(url: str) -> str:
    """`url` for a message or a log line: `smtp://user:pass@host` → `smtp://***@host`. Anything up to the last
    `@` goes, since a password may hold unescaped `/`, `#` or `@`; losing a host to an `@` later on is the
    lesser harm."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"


def normalize_url(url: str) -> str:
    """Accept `postgres://` and `postgresql://` (driven by psycopg 3), libpq's several hosts among them
    (`postgresql://user@h1:5432,h2:5432/db?target_session_attrs=read-write`), and SQLAlchemy URLs; raise
    ValueError, whose message shows the URL without its password."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    try:
        url = _hosts_in_query(url) if url.startswith("postgresql") else url
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ValueError(f"not a database URL: {without_credentials(url)!r}") from exc
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise ValueError(f"unsupported database {parsed.get_backend_name()!r}; use postgresql:// or sqlite://")
    return url


def _hosts_in_query(url: str) -> str:
    """libpq's `h1:p1,h2:p2` host list as the query's `host=h1:p1&host=h2:p2`, the form SQLAlchemy's URL can hold
    (it hands psycopg the hosts and ports as libpq's lists, and psycopg tries each in turn)."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return url
    for host in hosts.split(","):
        name, _, port = host.rpartition(":") if ":" in host and not host.endswith("]") else (host, "", "0")
        if not name or not port.isdigit() or "host=" in parts.query:
            raise ValueError("an empty host or port, or hosts both in the address and in the query")
    query = "&".join([*(f"host={host}" for host in hosts.split(",")), *([parts.query] if parts.query else [])])
    return urlunsplit(parts._replace(netloc=userinfo + at, query=query))


def make_engine(
    url: str, *, pool_size: int = 10, autocommit: bool = False, prepared_statements: bool = True
) -> Engine:
    """Create an engine for `url` that opens at most `pool_size` PostgreSQL connections (more callers wait for
    one); SQLite files get WAL mode so readers never block the writer. Without `prepared_statements`, no statement
    is prepared on the server, as a pooler in transaction mode that cannot track them (PgBouncer < 1.21) needs."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False})
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    # No overflow: `pool_size` is all the engine ever opens, so a process's connections add up to what it states.
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_recycle=1800,
        connect_args={"connect_timeout": CONNECT_TIMEOUT, **({} if prepared_statements else UNPREPARED)},
        **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
    )


def _plan_by_key(dbapi_connection: Any, _record: Any) -> None:
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        cursor.execute("SET enable_seqscan = off")
    dbapi_connection.commit()  # a session setting made in a transaction that rolls back would not stay


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """The ledger's connections. `run` executes one unit of work and maps outages to `LedgerUnavailable`."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        transactions: int | None = None,
        kept: int | None = None,
        prepared_statements: bool = True,
    ) -> None:
        """On PostgreSQL, a connection each for up to `pool_size` threads running statements at the same moment,
        `transactions` of them (default: all) in a transaction at once (more wait for one), and `kept` threads
        (default: `pool_size`) keeping one of their own (`run(kept=True)`; 0: none does). The process never opens
        more than `max_connections`, their sum; SQLite has a single file and no such budget.

        `prepared_statements=False`: nothing is prepared on the server, for PgBouncer in transaction mode (see
        `make_engine`)."""
        transactions = pool_size if transactions is None else transactions
        kept = pool_size if kept is None else kept
        if pool_size < 1 or transactions < 1 or kept < 0:
            # SQLAlchemy reads a pool size of 0 as "no limit".
            raise ValueError(f"pool_size {pool_size} and transactions {transactions} must be >= 1, kept {kept} >= 0")
        self.max_connections = pool_size + transactions + kept
        self.engine = make_engine(url, pool_size=transactions, prepared_statements=prepared_statements)
        # Single statements need no BEGIN/COMMIT round trips: each one is atomic on its own. On PostgreSQL
        # they get a pool of their own, born in autocommit, since switching a pooled connection's mode at
        # every checkout and back cost more CPU than the statement (bench/README.md). SQLite keeps one pool.
        self._autocommit: Engine = (
            make_engine(url, pool_size=pool_size, autocommit=True, prepared_statements=prepared_statements)
            if self.engine.dialect.name == "postgresql"
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        # Kept connections run only the batched hot-path statements, always with arrays of a few rows: left to
        # itself, PostgreSQL re-plans each execution (a custom plan for 3 rows looks cheaper than the generic one
        # for an unknown count), which cost a quarter of its CPU per job; the generic plan is the same plan.
        # That plan is made once per connection and kept until the next ANALYZE: made while `jobs` is new or
        # nearly empty, it scans the whole table for every batch (a fresh install, a bench run: 2,000+ rows read
        # per job within seconds). Every statement here finds its rows by key, so a scan is never the right plan; and
        # since turning scans off still leaves a whole index to read, each statement names its keys where the plan
        # reads `jobs` (ledger/intake.py, ledger/claims.py).
        self._kept_engine: Engine | None = None
        # Unprepared statements are planned at each execution with their own values: no plan is kept to steer,
        # and behind a pooler in transaction mode a session setting would stay with whichever server connection
        # ran it, not with this connection.
        if self.engine.dialect.name == "postgresql" and kept:
            self._kept_engine = make_engine(
                url, pool_size=kept, autocommit=True, prepared_statements=prepared_statements
            )
            if prepared_statements:
                event.listen(self._kept_engine, "connect", _plan_by_key)
        self._kept = threading.local()
        self._all_kept: list[Connection] = []
        self._keeping = threading.Lock()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def run(self, operation: Callable[[Connection], T], *, transaction: bool = False, kept: bool = False) -> T:
        """Run `operation` on a connection (in one transaction when asked), retrying once on a dropped one.

        A pooled connection that died with its server fails on first use; the retry then gets a
        fresh one, so a database restart costs callers nothing once the server is back. So does a connection
        found read-only (a standby, or a primary demoted by a failover that still answers): it is dropped with
        its pool, never reused, and the retry connects to whichever host is the primary now (`DATABASE_URL`'s
        hosts with `target_session_attrs=read-write`); found none, the call raises `LedgerUnavailable`.

        `kept`: the calling thread keeps its connection from one call to the next instead of taking one from
        the pool each time, which cost the batching threads (one per batcher, for the life of the process)
        more CPU than their statements (bench/README.md). PostgreSQL only, and never with `transaction`.
        """
        if kept and transaction:
            raise ValueError("a kept connection runs statements on their own, never in a transaction")
        keep = kept and self.dialect == "postgresql"
        for attempt in (1, 2):
            try:
                with self._kept_connection() if keep else self.connect(transaction=transaction) as conn:
                    _refuse_read_only(conn)
                    try:
                        return operation(conn)
                    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                        raise _driver_failure(conn, exc) from exc
                    except ReadOnlySqlTransaction as exc:
                        raise _drop(conn) from exc
                    except DBAPIError as exc:
                        if isinstance(exc.orig, ReadOnlySqlTransaction):
                            raise _drop(conn) from exc.orig
                        raise
            except _LostConnection as exc:
                if attempt == 1:
                    continue
                raise LedgerUnavailable(_first_line(exc.__cause__)) from exc.__cause__
            except DBAPIError as exc:
                if exc.connection_invalidated and attempt == 1:
                    continue
                if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
                    raise LedgerUnavailable(_first_line(exc.orig)) from exc
                raise
        raise AssertionError("unreachable")

    @contextmanager
    def connect(self, *, transaction: bool = False) -> Iterator[Connection]:
        """A connection that commits when the block ends (transaction) or after each statement."""
        if transaction:
            with self.engine.begin() as conn:
                yield conn
        else:
            with self._autocommit.connect() as conn:
                yield conn

    @contextmanager
    def _kept_connection(self) -> Iterator[Connection]:
        conn: Connection | None = getattr(self._kept, "connection", None)
        if conn is None or conn.invalidated or conn.closed:
            if conn is not None:
                conn.close()
            assert self._kept_engine is not None
            conn = self._kept.connection = self._kept_engine.connect()
            with self._keeping:
                self._all_kept.append(conn)
        yield conn

    def ping(self) -> None:
        """Raise `LedgerUnavailable` unless the database answers a trivial query."""
        self.run(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())

    def dispose(self) -> None:
        with self._keeping:
            kept, self._all_kept = self._all_kept, []
        for conn in kept:
            conn.close()
        self.engine.dispose()
        if self._autocommit is not self.engine:
            self._autocommit.dispose()
        if self._kept_engine is not None:
            self._kept_engine.dispose()


def postgres(conn: Connection) -> psycopg.Connection[Any] | None:
    """The psycopg connection under `conn` on PostgreSQL, else None: the hot path's statements go to it
    directly (see `DriverStatement`). Only inside `Database.run`, which maps its failures."""
    if conn.dialect.name != "postgresql":
        return None
    return conn.connection.driver_connection


class DriverStatement:
    """A SQLAlchemy statement compiled once for psycopg and sent through the driver as a prepared statement.

    SQLAlchemy's per-execution work (compiled-cache lookup, bind and result processing, the execution
    context) cost more client CPU than the round trip itself on the hot path (bench/README.md), so the
    statements run there per job skip it. Parameters go to psycopg as they are: aware datetimes, UUIDs,
    plain str values, `psycopg.types.json.Json` for JSON, `array_literal` for arrays.
    """

    def __init__(self, statement: ClauseElement, *, column_keys: Sequence[str] | None = None) -> None:
        compiled = statement.compile(dialect=psycopg_dialect.dialect(), column_keys=column_keys)
        self.sql = str(compiled)
        # The values the statement carries itself (a target status, "+ 1"), as psycopg sends them.
        self._constants = {
            name: getattr(bind.effective_value, "value", bind.effective_value)
            for bind, name in compiled.bind_names.items()
            if not bind.required
        }

    def execute(self, driver: psycopg.Connection[Any], params: dict[str, Any]) -> psycopg.Cursor[Any]:
        # Prepared unless the connection prepares nothing (`prepared_statements=False`: a threshold of None).
        prepare = driver.prepare_threshold is not None
        return driver.execute(self.sql, {**self._constants, **params}, prepare=prepare)


def array_literal(values: Iterable[uuid.UUID | int]) -> str:
    """`values` as PostgreSQL's text of an array, for a parameter the statement casts to `UUID[]` or `INTEGER[]`.

    psycopg adapts a list by inspecting and dumping each element in Python: a claim or success statement's
    parameters took 28-50 µs of client CPU to build and convert with lists, 14-18 µs with this text
    (bench/README.md). The text of a UUID or an integer needs no quoting in an array literal."""
    return "{" + ",".join(map(str, values)) + "}"


class _LostConnection(Exception):
    """The connection under a driver-level statement died; it, and the rest of its pool, have been let go."""


def _driver_failure(conn: Connection, error: psycopg.Error) -> Exception:
    """What `Database.run` makes of a driver-level statement's (see `postgres`) failure to reach the server,
    which SQLAlchemy's handling of lost connections never saw."""
    if conn.connection.driver_connection.broken:
        return _drop(conn)
    return LedgerUnavailable(_first_line(error))


def _drop(conn: Connection) -> _LostConnection:
    """Let `conn` go, and the rest of its pool: as SQLAlchemy does when its own statements meet a dead connection, since
    a server that dropped one (a restart) dropped them all, and one that turned read-only (a failover) did too. The
    retry then gets a connection to the server that is the primary now, not the next dead or read-only one."""
    conn.invalidate()
    conn.engine.dispose()
    return _LostConnection()


#: Settings PostgreSQL (14+) reports to the client whenever they change, which say a server takes no writes: a
#: standby (`in_hot_standby`), or a primary made read-only (`default_transaction_read_only`), as a failover tool
#: fences the old primary. Read from the connection's last messages, without a round trip.
_READ_ONLY_REPORTS = (b"in_hot_standby", b"default_transaction_read_only")


def _refuse_read_only(conn: Connection) -> None:
    """Raise `_LostConnection` (the connection and its pool dropped) if the server said it is read-only."""
    if conn.dialect.name != "postgresql":
        return
    pgconn = conn.connection.driver_connection.pgconn
    if any(pgconn.parameter_status(name) == b"on" for name in _READ_ONLY_REPORTS):
        error = LedgerUnavailable("the database server is read-only (a standby, or a primary demoted by a failover)")
        raise _drop(conn) from error


def _first_line(error: BaseException | None) -> str:
    text = str(error or "database error").strip()
    return text.splitlines()[0] if text else "database error"
