"""What the flow-control acceptance tests share: the gate's Redis state of the destinations a test used, forgotten
afterwards (receivers' ports come back in later tests), and the check that the stats still equal the ledger."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from sqlalchemy import select

from actors.flow import Gate
from actors.flow.gate import DEFAULT_PREFIX
from ledger import queries
from ledger.database import Database
from ledger.schema import jobs
from ledger.timestamps import utcnow


@contextmanager
def gate_of(redis_url: str, queue: str) -> Iterator[tuple[Gate, list[str]]]:
    """The gate under its real prefix (the workers'), and a list where the test names the destinations it uses:
    their state, leases and waiting lists are deleted on exit."""
    client = redis.Redis.from_url(redis_url)
    used: list[str] = []
    try:
        yield Gate(client), used
    finally:
        for key in used:
            for kind in ("state:", "leases:", f"waiting:{queue}:"):
                client.delete(f"{DEFAULT_PREFIX}{kind}{key}")
            client.zrem(f"{DEFAULT_PREFIX}known", key)
        client.delete(f"{DEFAULT_PREFIX}waiting:{queue}")
        client.close()


def assert_stats_equal_ledger(database: Database) -> None:
    """The stats (trigger-kept counters and partial indexes) count what the jobs table holds, status by status."""
    stats = database.run(lambda conn: queries.queue_stats(conn, now=utcnow()))
    assert stats.counts == database.run(queries.count_by_status)


def rows_of(database: Database, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """The jobs' rows as they are now, deferral columns included."""
    found = database.run(lambda conn: conn.execute(select(jobs).where(jobs.c.id.in_(job_ids))).all())
    return {row.id: row for row in found}
