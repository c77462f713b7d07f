"""The listing on the maintenance phase's big ledger: pages of a filtered walk read deep into it, over HTTP from
`wjp serve` and in this process from the ledger, and the plans of the listing's statements for every filter.

A deep cursor is made as the API makes one: the horizon of a real first page, and the position of a job that
matches the filters 30–70 % of the way down the walk through the seeded history.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from bench import common
from bench.common import DATABASE_URL, QUICK, CpuMeter, Service, bench_connect, pct

#: The filtered pages the target is about: status + channel, one rare status and one common one.
CASES = {
    "failed_webhook": {"status": "FAILED", "channel": "webhook"},
    "success_email": {"status": "SUCCESS", "channel": "email"},
}
PAGE = 50
#: Pages timed per case: a p99 of 200 samples is their second slowest, too much at the mercy of one hiccup.
SAMPLES = 200 if QUICK else 1000
#: Where the deep cursors stand, as fractions of the walk through the history from its newest job.
DEPTHS = (0.3, 0.4, 0.5, 0.6, 0.7)
#: bench/seed.py dates its history row g at this origin + g seconds.
SEED_ORIGIN = datetime(2026, 9, 1, tzinfo=UTC)


def measure(api: Service, port: int, history: int, samples: int = SAMPLES) -> dict[str, Any]:
    """`api`: the `wjp serve` listening on `port`; `history`: the rows of seeded history in the ledger. Besides the
    times, the CPU per page of the API and of its PostgreSQL backends, which other users' load sways less."""
    out: dict[str, Any] = {}
    for name, params in CASES.items():
        cursors = deep_cursors(port, params, history)
        with CpuMeter({"api": api.tree()}, common.backends_of_bench()) as meter:
            http_ms = _timed(samples, lambda i, c=cursors, p=params: _get(port, {**p, "cursor": c[i % len(c)]}))
        cores = meter.cores()
        out[name] = {
            "http_ms_p50": round(pct(http_ms, 50), 3),
            "http_ms_p99": round(pct(http_ms, 99), 3),
            "api_cpu_us_per_page": round(cores["api"] * meter.wall / len(http_ms) * 1e6),
            "postgres_cpu_us_per_page": round(cores["postgres_bench_backends"] * meter.wall / len(http_ms) * 1e6),
            "other_users_cores": cores["unaccounted_other_users"],
            "ledger_ms": _ledger_times(params, cursors, samples),
        }
    out["explain"] = explain_plans(history)
    return out


def worst_p99(scale: dict[str, Any] | None) -> float | None:
    """The target's figure: the slower case's HTTP p99, on one scale of the maintenance phase."""
    found = (scale or {}).get("listing")
    return max(found[name]["http_ms_p99"] for name in CASES) if found else None


def _get(port: int, params: dict[str, str]) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/api/notifications?" + urlencode({**params, "limit": PAGE}))
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 200, (response.status, body[:200])
    page = json.loads(body)
    assert len(page["data"]) == PAGE, len(page["data"])
    return page


def _timed(samples: int, call: Any) -> list[float]:
    times = []
    for i in range(samples + 5):
        started = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - started) * 1000)
    return times[5:]


def _seeded_at(g: float) -> datetime:
    return SEED_ORIGIN + timedelta(seconds=g)


def deep_cursors(port: int, params: dict[str, str], history: int) -> list[str]:
    from ledger.listing import Filters, Position
    from ledger.states import Status
    from service.listing import Cursor, encode_cursor, parse_query, scope_digest

    first = _get(port, params)
    walk = parse_query({"cursor": first["next_cursor"]}, dialect="postgresql").cursor
    assert walk is not None
    filters = Filters(scope="", statuses=frozenset({Status(params["status"])}), channel=params["channel"])
    cursors = []
    with bench_connect() as conn:
        for depth in DEPTHS:
            moment = _seeded_at(history * (1 - depth))
            row = conn.execute(
                "SELECT created_at, id FROM jobs WHERE scope = '' AND status = %s AND channel = %s AND created_at < %s"
                " ORDER BY created_at DESC, id DESC LIMIT 1",
                (params["status"], params["channel"], moment),
            ).fetchone()
            position = Position(row[0].astimezone(UTC), row[1])
            cursors.append(encode_cursor(Cursor(walk.horizon, position, filters, scope_digest(""))))
    return cursors


def _ledger_times(params: dict[str, str], cursors: list[str], samples: int) -> dict[str, float]:
    """The page's statements alone, on a warm connection of this process: what the ledger costs of a page."""
    from ledger import listing
    from ledger.database import Database
    from service.listing import parse_query

    database = Database(DATABASE_URL, pool_size=1, transactions=1, kept=0)
    queries = [parse_query({**params, "cursor": c}, dialect="postgresql") for c in cursors]

    def page(i: int) -> None:
        query = queries[i % len(queries)]
        assert query.cursor is not None
        cursor = query.cursor
        found = database.run(
            lambda conn: listing.list_jobs(
                conn, query.filters, limit=PAGE, horizon=cursor.horizon, after=cursor.position
            )
        )
        assert len(found.jobs) == PAGE

    times = _timed(samples, page)
    database.dispose()
    return {"p50": round(pct(times, 50), 3), "p99": round(pct(times, 99), 3)}


def explain_plans(history: int) -> dict[str, list[str]]:
    """EXPLAIN (ANALYZE, BUFFERS) of a page halfway down the walk for each filter, as the product sends it."""
    from ledger.database import Database
    from ledger.listing import Filters, Position
    from ledger.states import Status

    database = Database(DATABASE_URL, pool_size=1, transactions=1, kept=0)
    middle = _seeded_at(history / 2)
    after = Position(middle, uuid.UUID(int=2**128 - 1))
    filters = {
        "none": Filters(scope=""),
        "status": Filters(scope="", statuses=frozenset({Status.FAILED})),
        "statuses": Filters(scope="", statuses=frozenset({Status.FAILED, Status.CANCELLED})),
        "channel": Filters(scope="", channel="sms"),
        "destination": Filters(scope="", destination=""),
        "created": Filters(scope="", created_after=_seeded_at(history / 4), created_before=middle),
        "status_channel": Filters(scope="", statuses=frozenset({Status.FAILED}), channel="webhook"),
    }
    plans = {}
    for name, wanted in filters.items():
        statement, parameters = _page_statement(database, wanted, after)
        with database.engine.connect() as conn:
            rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).fetchall()
            conn.rollback()
        plans[name] = [row[0] for row in rows]
    database.dispose()
    return plans


def _page_statement(database: Any, filters: Any, after: Any) -> tuple[str, Any]:
    """The SQL and parameters of the page past `after` of a walk begun now, as the ledger sends them."""
    from sqlalchemy import event

    from ledger import listing

    captured: list[tuple[str, Any]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        captured.append((statement, parameters))

    horizon = database.run(lambda conn: listing.list_jobs(conn, filters, limit=1).horizon)
    event.listen(database.engine, "before_cursor_execute", capture)
    try:
        database.run(
            lambda conn: listing.list_jobs(conn, filters, limit=PAGE, horizon=horizon, after=after), transaction=True
        )
    finally:
        event.remove(database.engine, "before_cursor_execute", capture)
    return captured[-1]
