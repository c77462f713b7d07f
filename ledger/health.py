"""The dashboard's Health page: jobs finished per minute by outcome, and how long jobs took from POST to SUCCESS.

Each is one statement over the index of completion times, bounded to the window asked for, so its cost follows
the jobs finished in the window, not the ledger's size. For the latencies the database ranks the window's values
(window functions, on PostgreSQL and SQLite alike) and hands back only the few rows at the percentiles,
nearest-rank, however many jobs finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Float, Integer, cast, func, literal, or_, select

from ledger.activity import Minute
from ledger.schema import jobs, status_in
from ledger.states import Status
from ledger.timestamps import UTCDateTime

#: Seconds in a day, to turn SQLite's Julian days into seconds.
_DAY = 86400.0


@dataclass(frozen=True)
class LatencyMinute:
    """Jobs that succeeded in the minute starting at `start`, and the seconds from their POST to SUCCESS."""

    start: datetime
    jobs: int
    #: None when no job succeeded in the minute.
    p50: float | None
    p99: float | None


@dataclass(frozen=True)
class Latency:
    minutes: list[LatencyMinute]
    #: Over the whole window; None when no job succeeded in it.
    p50: float | None
    p99: float | None


def _seconds_between(conn: Connection, start: Any, end: Any) -> Any:
    if conn.dialect.name == "postgresql":
        # As a double: EXTRACT answers `numeric`, slower to compute with and to sort.
        return cast(func.extract("epoch", end - start), Float)
    # SQLite keeps the times as text; julianday() reads them, to within ~50 µs (a double of ~2.5 M days), so
    # the difference is rounded to the millisecond.
    return func.round((func.julianday(end) - func.julianday(start)) * _DAY, 3)


def _rank(count: Any, percent: int) -> Any:
    """The nearest rank of the `percent`th percentile among `count` values, ceil(count × percent / 100), in
    integer arithmetic (SQLite has no ceil() without its math extension)."""
    return (count * percent + 99) // 100


def _minute(conn: Connection, start: datetime) -> Any:
    """The minute of the window (0 for the first) a job completed in."""
    since_start = _seconds_between(conn, literal(start, UTCDateTime()), jobs.c.completed_at)
    return cast(func.floor(since_start / 60) if conn.dialect.name == "postgresql" else since_start / 60, Integer)


def _finished_within(start: datetime, end: datetime) -> list[Any]:
    # The first test is the predicate of the index of completion times, which the window is read from.
    return [jobs.c.completed_at.is_not(None), jobs.c.completed_at >= start, jobs.c.completed_at < end]


def finished_per_minute(conn: Connection, *, now: datetime, minutes: int) -> list[Minute]:
    """Jobs that became SUCCESS or FAILED in each of the last `minutes` minutes, oldest first."""
    start = now - timedelta(minutes=minutes)
    minute = _minute(conn, start).label("minute")
    rows = conn.execute(
        select(minute, jobs.c.status, func.count())
        .where(*_finished_within(start, now), status_in({Status.SUCCESS, Status.FAILED}))
        .group_by(minute, jobs.c.status)
    ).all()
    counts = {(row[0], row[1]): int(row[2]) for row in rows}
    return [
        Minute(start + timedelta(minutes=i), counts.get((i, "SUCCESS"), 0), counts.get((i, "FAILED"), 0))
        for i in range(minutes)
    ]


def success_latency(conn: Connection, *, now: datetime, minutes: int) -> Latency:
    """POST → SUCCESS seconds, p50 and p99, for each of the last `minutes` minutes (oldest first) and overall."""
    start = now - timedelta(minutes=minutes)
    done = (
        select(
            _minute(conn, start).label("minute"),
            cast(_seconds_between(conn, jobs.c.created_at, jobs.c.completed_at), Float).label("seconds"),
        )
        .where(*_finished_within(start, now), status_in({Status.SUCCESS}))
        .subquery("done")
    )
    ranked = select(
        done.c.minute,
        done.c.seconds,
        func.row_number().over(partition_by=done.c.minute, order_by=done.c.seconds).label("in_minute"),
        func.count().over(partition_by=done.c.minute).label("minute_jobs"),
        func.row_number().over(order_by=done.c.seconds).label("overall"),
        func.count().over().label("all_jobs"),
    ).subquery("ranked")
    wanted = [
        ranked.c.in_minute == _rank(ranked.c.minute_jobs, 50),
        ranked.c.in_minute == _rank(ranked.c.minute_jobs, 99),
        ranked.c.overall == _rank(ranked.c.all_jobs, 50),
        ranked.c.overall == _rank(ranked.c.all_jobs, 99),
    ]
    rows = conn.execute(select(ranked).where(or_(*wanted))).all()
    per_minute: dict[int, dict[str, Any]] = {}
    overall: dict[int, float] = {}
    for row in rows:
        found = per_minute.setdefault(row.minute, {"jobs": row.minute_jobs})
        for percent in (50, 99):
            if row.in_minute == (row.minute_jobs * percent + 99) // 100:
                found[f"p{percent}"] = row.seconds
            if row.overall == (row.all_jobs * percent + 99) // 100:
                overall[percent] = row.seconds
    # Every minute with a success has its median and 99th row in the result, so `per_minute` misses none.
    return Latency(
        minutes=[
            LatencyMinute(
                start + timedelta(minutes=i),
                per_minute.get(i, {}).get("jobs", 0),
                per_minute.get(i, {}).get("p50"),
                per_minute.get(i, {}).get("p99"),
            )
            for i in range(minutes)
        ],
        p50=overall.get(50),
        p99=overall.get(99),
    )
