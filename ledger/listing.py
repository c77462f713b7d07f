"""Listing a producer's jobs newest first, page by page, each walk pinned to the jobs committed when it began.

A walk is keyset-paginated on (created_at, id) descending, and each of its pages is limited to the jobs
committed when its first page was read: its *horizon*. Ordering by created_at alone could not do that, since a job's
created_at is taken before its transaction commits: a slow intake can commit, after a walk began, a job dated
before the walk's position. The horizon tells such a job apart by when it was committed:

- PostgreSQL: the first page's snapshot (`pg_current_snapshot()`); a job counts when the transaction that
  created it (`jobs.created_xid`) is visible in that snapshot.
- SQLite: the greatest rowid at the first page. SQLite has one writer at a time and gives a new row the next
  rowid while it holds the write lock, so rowids follow commit order. (A rowid comes back only when the newest
  row is deleted, and VACUUM, which may renumber them, is never run on the ledger.)

The horizon pins what a job's creation depends on; a job's status may change during a walk, and a status filter
is judged on each job's status when its page is read (it then appears at most once, never twice).
"""

from __future__ import annotations

import functools
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Integer, String, bindparam, func, literal_column, select, text, tuple_, union_all
from sqlalchemy.types import Uuid

from ledger.queries import JOB_COLUMNS, JobView, job_view
from ledger.schema import jobs
from ledger.states import Status
from ledger.timestamps import UTCDateTime

#: Largest page a caller may ask for.
MAX_LIMIT = 500

# `xmin:xmax:xip,…` as PostgreSQL prints a snapshot (64-bit transaction ids).
_SNAPSHOT = re.compile(r"(\d{1,20}):(\d{1,20}):((?:\d{1,20})(?:,\d{1,20})*)?")
_ROWID = re.compile(r"\d{1,19}")
_ROWID_COLUMN = literal_column("jobs.rowid")
_VISIBLE_IN_SNAPSHOT = text(
    "(jobs.created_xid IS NULL OR pg_visible_in_snapshot(jobs.created_xid, CAST(:horizon AS pg_snapshot)))"
).bindparams(bindparam("horizon", type_=String()))


@dataclass(frozen=True)
class Filters:
    """What a walk lists: one producer's jobs (`scope`), narrowed by the optional filters."""

    scope: str
    statuses: frozenset[Status] = frozenset()
    channel: str | None = None
    destination: str | None = None
    #: created_at at or after this moment.
    created_after: datetime | None = None
    #: created_at strictly before this moment.
    created_before: datetime | None = None


@dataclass(frozen=True)
class Position:
    """The last job a page returned; the next page starts just past it."""

    created_at: datetime
    job_id: uuid.UUID


@dataclass(frozen=True)
class Page:
    jobs: list[JobView]
    #: The walk's horizon, to be handed back with `after` for its next page.
    horizon: str
    #: Where the next page starts; None when this page is the walk's last.
    after: Position | None


def valid_horizon(dialect: str, horizon: str) -> bool:
    """Whether `horizon` is one this dialect could have handed out (checked before it reaches a statement, where
    a malformed one would be an error of the database's)."""
    if dialect != "postgresql":
        return _ROWID.fullmatch(horizon) is not None and int(horizon) < 2**63
    found = _SNAPSHOT.fullmatch(horizon)
    if found is None:
        return False
    xmin, xmax = int(found[1]), int(found[2])
    running = [int(x) for x in found[3].split(",")] if found[3] else []
    # PostgreSQL's own rules for a snapshot's text: ids within 64 bits, 0 < xmin <= xmax, and running ids in
    # order within [xmin, xmax).
    if not 0 < xmin <= xmax < 2**64:
        return False
    return running == sorted(running) and all(xmin <= x < xmax for x in running)


def list_jobs(
    conn: Connection, filters: Filters, *, limit: int, horizon: str | None = None, after: Position | None = None
) -> Page:
    """A page of at most `limit` jobs matching `filters`, newest first: the walk's first page when `horizon` is
    None, else the page past `after` among the jobs within `horizon`."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit {limit} is not within 1..{MAX_LIMIT}")
    if horizon is None:
        horizon = _current_horizon(conn)
    # One more than asked: whether it comes back tells whether another page follows.
    statement, parameters = _page(conn.dialect.name, filters, horizon, after, limit + 1)
    found = [job_view(row) for row in conn.execute(statement, parameters)]
    if len(found) <= limit:
        return Page(found, horizon, None)
    last = found[limit - 1]
    return Page(found[:limit], horizon, Position(last.created_at, last.id))


def page_statement(dialect: str, filters: Filters, horizon: str, after: Position | None, limit: int) -> Any:
    """The statement of a page with its values bound, as `list_jobs` sends it (for EXPLAIN)."""
    statement, parameters = _page(dialect, filters, horizon, after, limit)
    return statement.params(parameters)


def _current_horizon(conn: Connection) -> str:
    if conn.dialect.name == "postgresql":
        return str(conn.execute(select(func.pg_current_snapshot())).scalar_one())
    return str(conn.execute(select(func.coalesce(func.max(_ROWID_COLUMN), 0)).select_from(jobs)).scalar_one())


@dataclass(frozen=True)
class _Shape:
    """What a page's statement is made of, apart from its values: a statement is built once per shape."""

    dialect: str
    statuses: int
    channel: bool
    destination: bool
    created_after: bool
    created_before: bool
    after: bool


def _page(
    dialect: str, filters: Filters, horizon: str, after: Position | None, limit: int
) -> tuple[Any, dict[str, Any]]:
    statuses = sorted(filters.statuses)
    if not statuses and filters.channel is None and filters.destination is None:
        # No index has the plain (scope, created_at, id) order: the walk is every status's, merged (`_statement`).
        statuses = sorted(Status)
    optional = {
        "channel": filters.channel,
        "destination": filters.destination,
        "created_after": filters.created_after,
        "created_before": filters.created_before,
    }
    shape = _Shape(dialect, len(statuses), *(value is not None for value in optional.values()), after is not None)
    parameters: dict[str, Any] = {
        "scope": filters.scope,
        "horizon": horizon if dialect == "postgresql" else int(horizon),
        "limit": limit,
        **{name: value for name, value in optional.items() if value is not None},
        **{f"status_{i}": status.value for i, status in enumerate(statuses)},
    }
    if after is not None:
        parameters.update(after_created_at=after.created_at, after_id=after.job_id)
    return _statement(shape), parameters


@functools.cache
def _statement(shape: _Shape) -> Any:
    """One ordered, limited select when at most one status is asked for; else one per status, merged. A status
    each keeps every branch on the (scope, status, created_at, id) index in order, where `status IN (…)` would
    make the database sort every matching row to find the newest few. A walk with no filter on an indexed column
    is one with every status: each job is in one status, so each is read once, by its status's branch."""
    order = (jobs.c.created_at.desc(), jobs.c.id.desc())
    limit = bindparam("limit", type_=Integer())
    base = select(*JOB_COLUMNS).where(*_conditions(shape)).order_by(*order)
    statuses = [jobs.c.status == bindparam(f"status_{i}", type_=String()) for i in range(shape.statuses)]
    if len(statuses) <= 1:
        return base.where(*statuses).limit(limit)
    # Each branch a subquery, since SQLite takes no ORDER BY or LIMIT on the members of a UNION ALL themselves.
    branches = [select(base.where(status).limit(limit).subquery()) for status in statuses]
    merged = union_all(*branches).subquery("page")
    return select(merged).order_by(merged.c.created_at.desc(), merged.c.id.desc()).limit(limit)


def _conditions(shape: _Shape) -> list[Any]:
    conditions: list[Any] = [jobs.c.scope == bindparam("scope", type_=String())]
    if shape.dialect == "postgresql":
        conditions.append(_VISIBLE_IN_SNAPSHOT)
    else:
        conditions.append(bindparam("horizon", type_=Integer()) >= _ROWID_COLUMN)
    if shape.channel:
        conditions.append(jobs.c.channel == bindparam("channel", type_=String()))
    if shape.destination:
        conditions.append(jobs.c.destination == bindparam("destination", type_=String()))
    if shape.created_after:
        conditions.append(jobs.c.created_at >= bindparam("created_after", type_=UTCDateTime()))
    if shape.created_before:
        conditions.append(jobs.c.created_at < bindparam("created_before", type_=UTCDateTime()))
    if shape.after:
        # A row comparison: both databases read it as one range of the index, from the position downwards.
        position = tuple_(bindparam("after_created_at", type_=UTCDateTime()), bindparam("after_id", type_=Uuid()))
        conditions.append(tuple_(jobs.c.created_at, jobs.c.id) < position)
    return conditions
