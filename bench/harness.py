"""What every phase of `make bench` shares: the benchmark database and Redis, our API server and delivery worker."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench import common
from bench.common import DATABASE_URL, PYTHON, REDIS_URL, ROOT, Service, bench_connect, bench_env, start
from bench.intake import API_WORKERS, SERVER_START_TIMEOUT

os.environ["DATABASE_URL"] = DATABASE_URL
os.environ["REDIS_URL"] = REDIS_URL

import redis

WJP = str(Path(PYTHON).parent / "wjp")
WORKER_PROCESSES, WORKER_THREADS = 2, 8
QUEUE = "notifications"

r = redis.Redis.from_url(REDIS_URL)


def setup_database() -> None:
    common.recreate_database()
    subprocess.run([WJP, "migrate"], env=bench_env(), cwd=ROOT, check=True, capture_output=True)
    with bench_connect() as conn:
        conn.execute(
            """CREATE TABLE baseline_jobs (
                 id uuid PRIMARY KEY, idempotency_key varchar(255) NOT NULL UNIQUE, recipient text NOT NULL,
                 channel varchar(32) NOT NULL, message text NOT NULL, status varchar(16) NOT NULL,
                 created_at timestamptz NOT NULL)"""
        )


def reset_ledger(*, checkpoint: bool = True) -> None:
    with bench_connect() as conn:
        conn.execute("TRUNCATE jobs, attempts, callbacks, baseline_jobs")
        conn.execute("UPDATE job_counts SET success = 0, failed = 0, cancelled = 0, success_attempts = 0")
        if checkpoint:
            conn.execute("CHECKPOINT")
    r.flushdb()


def api_server(name: str, *, workers: int = API_WORKERS, **env: str) -> tuple[Service, int]:
    port = common.free_port()
    service = start(
        name,
        [WJP, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        env=bench_env(**env),
    )
    try:
        common.wait_http(port, "/healthz", timeout=SERVER_START_TIMEOUT)
    except RuntimeError:
        service.stop()  # not left running when it did not come up in time
        raise
    return service, port


def worker(name: str, **env: str) -> Service:
    return start(
        name,
        [WJP, "worker", "--processes", str(WORKER_PROCESSES), "--threads", str(WORKER_THREADS)],
        env=bench_env(**env),
    )


def worker_processes(service: Service) -> list[int]:
    """The Dramatiq worker processes (those that run the actor), not the supervising main process: its children."""
    table = common.process_table()
    return [p for p in common.descendants(service.pid, include_self=False, table=table) if table[p][0] == service.pid]
