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
from collections.abc import Sequence
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
    channels = _branch_channels(conn, filters)
    if channels == []:
        return Page([], horizon, None)  # no job of the scope at all
    # One more than asked: whether it comes back tells whether another page follows.
    statement, parameters = _page(conn.dialect.name, filters, channels, horizon, after, limit + 1)
    found = [job_view(row) for row in conn.execute(statement, parameters)]
    if len(found) <= limit:
        return Page(found, horizon, None)
    last = found[limit - 1]
    return Page(found[:limit], horizon, Position(last.created_at, last.id))


def page_statement(conn: Connection, filters: Filters, horizon: str, after: Position | None, limit: int) -> Any:
    """The statement of a page with its values bound, as `list_jobs` sends it (for EXPLAIN)."""
    channels = _branch_channels(conn, filters)
    if not channels:
        raise ValueError(f"scope {filters.scope!r} has no job: its pages need no statement")
    statement, parameters = _page(conn.dialect.name, filters, channels, horizon, after, limit)
    return statement.params(parameters)


def channels_in_scope(conn: Connection, scope: str, statuses: Sequence[Status]) -> list[str]:
    """Every channel of a job of `scope` in one of `statuses`, in order: a few probes of the listing's status index
    for each, however many jobs there are."""
    return list(conn.execute(channels_statement(scope, statuses)).scalars())


def channels_statement(scope: str, statuses: Sequence[Status]) -> Any:
    """The statement of `channels_in_scope` with its values bound (for EXPLAIN)."""
    parameters = {"scope": scope, **{f"status_{i}": status.value for i, status in enumerate(statuses)}}
    return _channels_statement(len(statuses)).bindparams(**parameters)


@functools.cache
def _channels_statement(statuses: int) -> Any:
    """A loose index scan: each step finds the least channel past the last one found, the least of each status's
    (one probe of the (scope, status, channel, …) index each), until there is none."""

    def least_channel_after(previous: str | None) -> str:
        above = "" if previous is None else f" AND channel > {previous}"
        per_status = " UNION ALL ".join(
            f"SELECT min(channel) AS channel FROM jobs WHERE scope = :scope AND status = :status_{i}{above}"
            for i in range(statuses)
        )
        return f"(SELECT min(channel) FROM ({per_status}) AS least_of_each_status)"

    return text(
        "WITH RECURSIVE found(channel) AS ("
        f"SELECT {least_channel_after(None)} "
        f"UNION ALL SELECT {least_channel_after('found.channel')} FROM found WHERE found.channel IS NOT NULL"
        ") SELECT channel FROM found WHERE channel IS NOT NULL"
    ).bindparams(
        bindparam("scope", type_=String()), *(bindparam(f"status_{i}", type_=String()) for i in range(statuses))
    )


def _walk_statuses(filters: Filters) -> list[Status]:
    """The status of each branch of the page's statement (none: no status condition). The status index has no
    (scope, [channel,] created_at, id) order: a walk with no status filter is every status's, merged, unless the
    destination index serves it."""
    if filters.statuses or filters.destination is not None:
        return sorted(filters.statuses)
    return sorted(Status)


def _branch_channels(conn: Connection, filters: Filters) -> list[str | None]:
    """The channel of each branch of the page's statement (None: no channel condition). The status index serves
    a walk in (created_at, id) order only within one status and one channel: a walk with no destination and no
    channel filter has a branch for each channel of the scope's jobs in the statuses it reads. (A job that comes
    into a status asked for during the walk, in a channel no other job of that status had, may then be missed:
    a status filter is judged as each page is read, and such a job appears at most once.)"""
    if filters.channel is not None:
        return [filters.channel]
    if filters.destination is not None:
        return [None]
    return list(channels_in_scope(conn, filters.scope, _walk_statuses(filters)))


def _current_horizon(conn: Connection) -> str:
    if conn.dialect.name == "postgresql":
        return str(conn.execute(select(func.pg_current_snapshot())).scalar_one())
    return str(conn.execute(select(func.coalesce(func.max(_ROWID_COLUMN), 0)).select_from(jobs)).scalar_one())


@dataclass(frozen=True)
class _Shape:
    """What a page's statement is made of, apart from its values: a statement is built once per shape."""

    dialect: str
    #: How many statuses, and how many channels, the branches take in turn (0: no condition on it).
    statuses: int
    channels: int
    destination: bool
    created_after: bool
    created_before: bool
    after: bool
    #: Written into the statement: PostgreSQL prices a generic plan with an unknown LIMIT as if it read a tenth of
    #: the rows, so a page with a bound one was planned anew at every execution (bench/README.md, issue 20).
    limit: int


def _page(
    dialect: str, filters: Filters, channels: list[str | None], horizon: str, after: Position | None, limit: int
) -> tuple[Any, dict[str, Any]]:
    statuses = _walk_statuses(filters)
    named = [channel for channel in channels if channel is not None]
    if after is not None and filters.created_before is not None and filters.created_before <= after.created_at:
        # Every job before created_before is past the position: the index is read from created_before down, where
        # with both bounds PostgreSQL starts at the position and reads each entry in between.
        after = None
    optional = {
        "destination": filters.destination,
        "created_after": filters.created_after,
        "created_before": filters.created_before,
    }
    filtered = (value is not None for value in optional.values())
    shape = _Shape(dialect, len(statuses), len(named), *filtered, after is not None, limit)
    parameters: dict[str, Any] = {
        "scope": filters.scope,
        "horizon": horizon if dialect == "postgresql" else int(horizon),
        **{name: value for name, value in optional.items() if value is not None},
        **{f"status_{i}": status.value for i, status in enumerate(statuses)},
        **{f"channel_{i}": channel for i, channel in enumerate(named)},
    }
    if after is not None:
        parameters.update(after_created_at=after.created_at, after_id=after.job_id)
    return _statement(shape), parameters


@functools.cache
def _statement(shape: _Shape) -> Any:
    """One ordered, limited select for one status and channel; else one for each pair of them, merged. A pair
    each keeps every branch on the (scope, status, channel, created_at, id) index in order, where `status IN (…)`
    would make the database sort every matching row to find the newest few. Each job has one status and one
    channel, so each is read once, by its pair's branch. With a destination filter, the destination index serves
    every branch, which then needs no channel of its own."""
    order = (jobs.c.created_at.desc(), jobs.c.id.desc())
    limit = literal_column(str(shape.limit), Integer())
    base = select(*JOB_COLUMNS).where(*_conditions(shape)).order_by(*order)
    statuses = [(jobs.c.status == bindparam(f"status_{i}", type_=String()),) for i in range(shape.statuses)]
    channels = [(jobs.c.channel == bindparam(f"channel_{i}", type_=String()),) for i in range(shape.channels)]
    pairs = [status + channel for status in statuses or [()] for channel in channels or [()]]
    if len(pairs) == 1:
        return base.where(*pairs[0]).limit(limit)
    # Each branch a subquery, since SQLite takes no ORDER BY or LIMIT on the members of a UNION ALL themselves.
    branches = [select(base.where(*pair).limit(limit).subquery()) for pair in pairs]
    merged = union_all(*branches).subquery("page")
    return select(merged).order_by(merged.c.created_at.desc(), merged.c.id.desc()).limit(limit)


def _conditions(shape: _Shape) -> list[Any]:
    conditions: list[Any] = [jobs.c.scope == bindparam("scope", type_=String())]
    if shape.dialect == "postgresql":
        conditions.append(_VISIBLE_IN_SNAPSHOT)
    else:
        conditions.append(bindparam("horizon", type_=Integer()) >= _ROWID_COLUMN)
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
