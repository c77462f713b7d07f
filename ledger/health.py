"""How long jobs take from POST to SUCCESS, per minute, for the dashboard's Health page.

One statement over the index of completion times, bounded to the window asked for: the database ranks the
window's latencies (window functions, on PostgreSQL and SQLite alike) and hands back only the few rows at the
percentiles, nearest-rank, so nothing but those rows leaves it however many jobs finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Float, Integer, cast, func, literal, or_, select

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
        return func.extract("epoch", end - start)
    # SQLite keeps the times as text; julianday() reads them, to within ~50 µs (a double of ~2.5 M days), so
    # the difference is rounded to the millisecond.
    return func.round((func.julianday(end) - func.julianday(start)) * _DAY, 3)


def _rank(count: Any, percent: int) -> Any:
    """The nearest rank of the `percent`th percentile among `count` values, ceil(count × percent / 100), in
    integer arithmetic (SQLite has no ceil() without its math extension)."""
    return (count * percent + 99) // 100


def success_latency(conn: Connection, *, now: datetime, minutes: int) -> Latency:
    """POST → SUCCESS seconds, p50 and p99, for each of the last `minutes` minutes (oldest first) and overall."""
    start = now - timedelta(minutes=minutes)
    since_start = _seconds_between(conn, literal(start, UTCDateTime()), jobs.c.completed_at)
    minute = func.floor(since_start / 60) if conn.dialect.name == "postgresql" else since_start / 60
    done = (
        select(
            cast(minute, Integer).label("minute"),
            cast(_seconds_between(conn, jobs.c.created_at, jobs.c.completed_at), Float).label("seconds"),
        )
        .where(
            status_in({Status.SUCCESS}),
            jobs.c.completed_at.is_not(None),  # the index of completion times holds only these
            jobs.c.completed_at >= start,
            jobs.c.completed_at < now,
        )
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
