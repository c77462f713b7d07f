"""What traces cost: intake (in-process POSTs through the app factory's app) and drain (an in-process Dramatiq
worker built as `actors.worker` builds it) of BENCH_TRACING_N log-channel jobs, in µs of wall and CPU per job.

    python bench/tracing_cost.py off     # OTEL_* unset
    python bench/tracing_cost.py on      # spans exported to an OTLP/HTTP receiver in a process of its own

Run it with PYTHONPATH pointing at another checkout to measure that one (`off` only, for a version without
tracing). Creates and drops its own database, and runs a redis-server of its own.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

N = int(os.environ.get("BENCH_TRACING_N", "2000"))
DB = f"wjp_bench_tracing_{uuid.uuid4().hex[:8]}"
SERVER = "postgresql://postgres@127.0.0.1:5432"
RECEIVER = (
    "import sys; from tests.otlp_receiver import OtlpReceiver; r = OtlpReceiver(); print(r.endpoint, flush=True);"
    "r.server.serve_forever()"
)


def main(mode: str) -> dict:
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{DB}"')
    receiver = None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    redis_server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    time.sleep(0.5)
    os.environ.update(
        DATABASE_URL=f"{SERVER}/{DB}", REDIS_URL=f"redis://127.0.0.1:{port}/0", WJP_QUEUE="trace-bench",
        PROMETHEUS_MULTIPROC_DIR=tempfile.mkdtemp(prefix="wjp-bench-metrics-"), WJP_WORKER_THREADS="8",
    )  # fmt: skip
    if mode == "on":
        receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.stdout.readline().strip()  # type: ignore[union-attr]
    try:
        return measure(mode)
    finally:
        if receiver is not None:
            receiver.kill()
        redis_server.kill()
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{DB}" WITH (FORCE)')


def measure(mode: str) -> dict:
    from dramatiq import Worker
    from falcon import testing

    from ledger.database import Database
    from ledger.migrate import upgrade
    from service.app import create_app_from_env

    database = Database(os.environ["DATABASE_URL"])
    upgrade(database)
    database.dispose()
    client = testing.TestClient(create_app_from_env())
    body = {"channel": "log", "recipient": "ops", "message": "a notification of some forty characters."}
    for i in range(100):  # warm-up: connections, prepared statements
        client.simulate_post("/api/notifications", json={**body, "idempotency_key": f"warm-{i}"})
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(N):
        answer = client.simulate_post("/api/notifications", json={**body, "idempotency_key": f"k-{i}"})
        assert answer.status_code == 202
    intake = ((time.perf_counter() - wall) / N * 1e6, (time.process_time() - cpu) / N * 1e6)

    logging.getLogger().addHandler(logging.NullHandler())
    import actors.worker as worker_module

    logging.getLogger("wjp").setLevel(logging.WARNING)  # the log channel's line per job is not what is measured
    database = worker_module.database
    total = N + 100

    def succeeded() -> int:
        return database.run(lambda conn: conn.exec_driver_sql("SELECT count(*) FROM jobs WHERE status = 'SUCCESS'"))\
            .scalar()  # fmt: skip

    worker = Worker(worker_module.broker, worker_threads=8, worker_timeout=100)
    cpu, wall = time.process_time(), time.perf_counter()
    worker.start()
    while succeeded() < total:
        time.sleep(0.01)
    drain = ((time.perf_counter() - wall) / total * 1e6, (time.process_time() - cpu) / total * 1e6)
    worker.stop()
    return {
        "mode": mode, "checkout": str(Path(create_app_from_env.__code__.co_filename).parents[1]), "jobs": N,
        "intake_wall_us": round(intake[0], 1), "intake_cpu_us": round(intake[1], 1),
        "drain_wall_us": round(drain[0], 1), "drain_cpu_us": round(drain[1], 1),
    }  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else "off")), flush=True)
    os._exit(0)  # the worker's and the batchers' daemon threads
