"""Operators' limits per destination, and how many jobs wait on each destination."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from ledger.schema import destinations, jobs, status_in
from ledger.states import WAITING

#: Highest concurrency an operator may set: far beyond any fleet's threads, inside the ledger's integer column.
MAX_CONCURRENCY = 1_000_000
#: Lowest and highest rate, attempts per second, an operator may set: one attempt in about 17 minutes keeps every
#: wait the gate computes within reach of a clock, and no receiver takes a million a second.
MIN_RATE = 0.001
MAX_RATE = 1_000_000.0


@dataclass(frozen=True)
class Limits:
    """An operator's override of a destination's limits; None: the workers' default for that limit."""

    concurrency: int | None = None
    rate: float | None = None


def overrides(conn: Connection) -> dict[str, Limits]:
    """Every destination an operator set a limit for. The table holds one row per such destination: a few."""
    rows = conn.execute(select(destinations.c.key, destinations.c.concurrency, destinations.c.rate)).all()
    return {row.key: Limits(row.concurrency, row.rate) for row in rows}


def set_limits(conn: Connection, key: str, limits: Limits, *, now: datetime) -> None:
    """Record `limits` for `key`; both None takes the destination back to the defaults (its row goes)."""
    if limits.concurrency is None and limits.rate is None:
        clear_limits(conn, key)
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    values = {"key": key, "concurrency": limits.concurrency, "rate": limits.rate, "updated_at": now}
    statement = dialect.insert(destinations).values(**values)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[destinations.c.key],
            set_={"concurrency": limits.concurrency, "rate": limits.rate, "updated_at": now},
        )
    )


def clear_limits(conn: Connection, key: str) -> bool:
    """Take `key` back to the defaults; whether it had an override."""
    return conn.execute(delete(destinations).where(destinations.c.key == key)).rowcount == 1


def waiting(conn: Connection, keys: Iterable[str] | None = None) -> dict[str, int]:
    """Jobs waiting (PENDING or RETRY) per destination, of `keys` or of every destination that has any; read from
    the partial index of waiting jobs by destination."""
    query = select(jobs.c.destination, func.count()).where(status_in(WAITING)).group_by(jobs.c.destination)
    if keys is not None:
        query = query.where(jobs.c.destination.in_(list(keys)))
    return {destination: int(count) for destination, count in conn.execute(query).all()}


#: Leaves a limit as it is in `change_limits`.
KEEP: Any = object()


def change_limits(conn: Connection, key: str, *, concurrency: Any = KEEP, rate: Any = KEEP, now: datetime) -> Limits:
    """Set the limits given (None: back to the default), keep the others; one upsert, so two operators changing
    different limits of one destination at once both take effect. Returns the destination's limits now."""
    changes = {name: value for name, value in (("concurrency", concurrency), ("rate", rate)) if value is not KEEP}
    if not changes:
        return overrides_of(conn, key)
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(destinations).values(key=key, updated_at=now, **changes)
    row = conn.execute(
        statement.on_conflict_do_update(index_elements=[destinations.c.key], set_={**changes, "updated_at": now})
        .returning(destinations.c.concurrency, destinations.c.rate)
    ).one()
    if row.concurrency is None and row.rate is None:
        clear_limits(conn, key)
    return Limits(row.concurrency, row.rate)


def overrides_of(conn: Connection, key: str) -> Limits:
    """The override of one destination; the defaults (both None) when it has none."""
    row = conn.execute(
        select(destinations.c.concurrency, destinations.c.rate).where(destinations.c.key == key)
    ).one_or_none()
    return Limits(row.concurrency, row.rate) if row is not None else Limits()
