"""The end-to-end phase of `make bench`: POST → SUCCESS latency at half the intake rate, open loop, with the worker
running beside the API."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from bench import common
from bench.common import PYTHON, QUICK, Service, bench_connect, log, pct, running
from bench.harness import api_server, reset_ledger, worker, worker_processes

E2E_SECONDS = float(os.environ.get("BENCH_E2E_SECONDS", "6" if QUICK else "15"))


def phase_e2e(max_rps: float, server: Callable[[str], tuple[Service, int]] = api_server) -> dict:
    rate = round(max_rps / 2, 1)
    log(f"e2e: POST at {rate:.0f}/s (half of {max_rps:.0f}) for {E2E_SECONDS:g}s, open loop, with wjp worker running")
    reset_ledger()
    api, port = server("e2e-api")
    work = worker("worker-e2e")
    with running(api, work):
        time.sleep(3)  # the worker's processes are up and polling
        sent_file = common.LOGS / "e2e-sent.json"
        gen_argv = [PYTHON, "-m", "bench.openloop", str(port), str(rate), str(E2E_SECONDS), "e2e", "2", str(sent_file)]
        client, cores = common.run_open_loop(gen_argv, {"gunicorn": api.tree(), "worker": work.tree()})
        accepted = int(client["statuses"].get("202", 0))
        deadline = time.monotonic() + 60
        with bench_connect() as conn:
            while time.monotonic() < deadline:
                left = conn.execute(
                    "SELECT count(*) FROM jobs WHERE status NOT IN ('SUCCESS', 'FAILED', 'CANCELLED')"
                ).fetchone()[0]
                if left == 0:
                    break
                time.sleep(0.1)
            # created_at: the API's clock before the INSERT; started_at: the claim; finished_at: the outcome.
            rows = conn.execute(
                "SELECT extract(epoch FROM j.completed_at - j.created_at) * 1000, "
                "       extract(epoch FROM a.started_at - j.created_at) * 1000, "
                "       extract(epoch FROM a.finished_at - a.started_at) * 1000, "
                "       j.idempotency_key, extract(epoch FROM j.completed_at) "
                "FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.number = j.attempts "
                "WHERE j.idempotency_key LIKE 'e2e-%' AND j.status = 'SUCCESS'"
            ).fetchall()
            unfinished = conn.execute(
                "SELECT count(*) FROM jobs WHERE idempotency_key LIKE 'e2e-%' AND status <> 'SUCCESS'"
            ).fetchone()[0]
        api_rss = {f"pid{p}": round(common.rss_mb(p), 1) for p in api.children()}
        worker_rss = {f"pid{p}": round(common.rss_mb(p), 1) for p in worker_processes(work)}
    latencies = [float(x[0]) for x in rows]
    to_claim, claim_to_done = [float(x[1]) for x in rows], [float(x[2]) for x in rows]
    sent = json.loads(sent_file.read_text())
    # What a producer sees: from starting its POST to the job's SUCCESS (the listen backlog included).
    seen = [(float(x[4]) - sent[x[3]]) * 1000 for x in rows if x[3] in sent]
    out = {
        "rate": rate,
        "seconds": E2E_SECONDS,
        "measured_jobs": len(latencies),
        "accepted_202": accepted,
        "unfinished": unfinished,
        "p50_ms": round(pct(latencies, 50), 2),
        "p90_ms": round(pct(latencies, 90), 2),
        "p99_ms": round(pct(latencies, 99), 2),
        "max_ms": round(max(latencies), 2) if latencies else None,
        "producer_view_ms": {"p50": round(pct(seen, 50), 2), "p99": round(pct(seen, 99), 2), "jobs": len(seen)},
        "split_ms": {
            "created_to_claimed_p50": round(pct(to_claim, 50), 2),
            "created_to_claimed_p99": round(pct(to_claim, 99), 2),
            "claimed_to_completed_p50": round(pct(claim_to_done, 50), 2),
            "claimed_to_completed_p99": round(pct(claim_to_done, 99), 2),
        },
        "client": client,
        # Requests waited in the API's listen backlog: the rate was not moderate for the machine as loaded then
        # (created_at is taken when a request is handled, so the ledger-based figures above exclude that wait).
        "api_saturated": bool(client["http_p50_ms"] > 100),
        "cores": cores,
        "rss_mb": {"api": api_rss, "worker": worker_rss},
    }
    log(f"  e2e: p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms over {len(latencies)} jobs (from the POST's start: "
        f"p50 {out['producer_view_ms']['p50']} ms, p99 {out['producer_view_ms']['p99']} ms); HTTP p50 "
        f"{client['http_p50_ms']} ms p99 {client['http_p99_ms']} ms; achieved {client['achieved_rate']}/s; "
        f"cores {cores}")  # fmt: skip
    return out
