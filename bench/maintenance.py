"""The maintenance phase of `make bench`: the stats, reconciler passes and listing on a ledger grown to millions of
rows, with the plans of their statements."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time

from bench import listing
from bench.common import DATABASE_URL, QUICK, ROOT, bench_connect, bench_env, log, pct, running
from bench.harness import WJP, api_server, r, reset_ledger

SCALES = [int(s) for s in os.environ.get("BENCH_SCALES", "1000000" if QUICK else "1000000,5000000").split(",")]
STATS_SAMPLES = 50 if QUICK else 200
RECONCILE_SAMPLES = 10 if QUICK else 30
CANDIDATE_PASSES = 3 if QUICK else 7


def time_stats_http(port: int, k: int) -> list[float]:
    samples = []
    for _ in range(k + 5):
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/internal/queue/stats")
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 200, response.status
        samples.append((time.perf_counter() - started) * 1000)
    return samples[5:]


def time_inprocess(k: int) -> dict:
    """The stats query and reconciler passes in this process (warm connection): what the ledger costs."""
    from actors.settings import Settings
    from ledger import queries
    from ledger.database import Database
    from ledger.timestamps import utcnow
    from service.cli import make_reconciler

    database = Database(DATABASE_URL, pool_size=1, transactions=1, kept=0)
    stats_ms = []
    for _ in range(k + 3):
        started = time.perf_counter()
        database.run(lambda conn: queries.queue_stats(conn, now=utcnow()))
        stats_ms.append((time.perf_counter() - started) * 1000)
    reconciler = make_reconciler(Settings.from_env())
    passes = []
    for _ in range(k + 2):
        started = time.perf_counter()
        report = reconciler.run_once()
        passes.append(((time.perf_counter() - started) * 1000, report))
    database.dispose()
    reconciler.database.dispose()
    return {"stats_ms": stats_ms[3:], "passes": passes[2:]}


def candidate_passes(k: int) -> list[tuple[float, object]]:
    from actors.settings import Settings
    from service.cli import make_reconciler

    reconciler = make_reconciler(Settings.from_env())
    reconciler.run_once()  # warm the connections; this pass re-dispatches the candidates
    out = []
    for _ in range(k):
        r.flushdb()  # the candidates' messages are lost again
        started = time.perf_counter()
        report = reconciler.run_once()
        out.append(((time.perf_counter() - started) * 1000, report))
    reconciler.database.dispose()
    return out  # the last pass's messages are in Redis: the next pass finds all 1,000 present


def cli_pass() -> dict:
    done = subprocess.run([WJP, "reconcile"], env=bench_env(), cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def explain_plans() -> dict[str, list[str]]:
    """EXPLAIN ANALYZE of the statements behind the stats and a reconciler pass, as the product sends them."""
    from sqlalchemy import event

    from actors.settings import Settings
    from ledger import queries
    from ledger.database import Database
    from ledger.timestamps import utcnow
    from service.cli import make_reconciler

    captured: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        captured.append((statement, parameters))

    database = Database(DATABASE_URL, pool_size=1, transactions=1, kept=0)
    reconciler = make_reconciler(Settings.from_env())
    event.listen(database.engine, "before_cursor_execute", capture)
    database.run(lambda conn: queries.queue_stats(conn, now=utcnow()))
    event.listen(reconciler.database.engine, "before_cursor_execute", capture)
    reconciler.run_once()
    event.remove(database.engine, "before_cursor_execute", capture)
    event.remove(reconciler.database.engine, "before_cursor_execute", capture)
    plans = {}
    with database.engine.connect() as conn:
        for i, (statement, parameters) in enumerate(captured):
            if not statement.lstrip().upper().startswith("SELECT"):
                continue
            rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).fetchall()
            plans[f"{i}: {' '.join(statement.split())[:90]}"] = [row[0] for row in rows]
        conn.rollback()
    database.dispose()
    reconciler.database.dispose()
    return plans


def phase_maintenance() -> dict:
    from bench import seed

    reset_ledger(checkpoint=False)
    out: dict = {}
    for scale in SCALES:
        label = f"{scale // 1_000_000}m"
        log(f"maintenance: growing the ledger to {scale:,} rows (generate_series, triggers off, counters recomputed)")
        with bench_connect() as conn:
            seeded = seed.grow_to(conn, scale)
        log(f"  seeded: {seeded}")
        api, port = api_server(f"stats-api-{label}", workers=2)
        with running(api):
            http_ms = time_stats_http(port, STATS_SAMPLES)
            inproc = time_inprocess(RECONCILE_SAMPLES)
            empty_cli = cli_pass()
            plans = explain_plans()
            log(f"  {label}: listing, deep pages of filtered walks")
            listed = listing.measure(api, port, scale)
            with bench_connect() as conn:
                seed.add_candidates(conn, 1000)
            cand = candidate_passes(CANDIDATE_PASSES)
            cand_cli_rows = cli_pass()  # messages now present: a pass that checks 1,000 and sends none
            with bench_connect() as conn:
                stats_rows = conn.execute("SELECT sum(success), sum(failed), sum(cancelled) FROM job_counts").fetchone()
                seed.remove_candidates(conn)
                r.flushdb()
        empty_ms = [ms for ms, _ in inproc["passes"]]
        cand_ms = [ms for ms, _ in cand]
        out[label] = {
            "seed": seeded,
            "stats_http_ms_p50": round(pct(http_ms, 50), 3),
            "stats_http_ms_p99": round(pct(http_ms, 99), 3),
            "stats_query_ms_p50": round(pct(inproc["stats_ms"], 50), 3),
            "reconcile_empty_ms_p50": round(pct(empty_ms, 50), 3),
            "reconcile_empty_ms_max": round(max(empty_ms), 3),
            "reconcile_empty_report": json.loads(inproc["passes"][-1][1].to_json()),
            "reconcile_empty_cli": empty_cli,
            "reconcile_1000_ms_p50": round(pct(cand_ms, 50), 3),
            "reconcile_1000_ms_max": round(max(cand_ms), 3),
            "reconcile_1000_report": json.loads(cand[-1][1].to_json()),
            "reconcile_1000_present_cli": cand_cli_rows,
            "counters": [int(x) for x in stats_rows],
            "explain": plans,
            "listing": listed,
        }
        log(f"  {label}: stats HTTP p50 {out[label]['stats_http_ms_p50']} ms (query {out[label]['stats_query_ms_p50']} "
            f"ms), empty pass {out[label]['reconcile_empty_ms_p50']} ms, 1000-candidate pass "
            f"{out[label]['reconcile_1000_ms_p50']} ms ({out[label]['reconcile_1000_report']})")  # fmt: skip
    return out
