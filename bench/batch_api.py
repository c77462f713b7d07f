"""The API's CPU per batch item and per batch request, in-process: the app of `create_app` on this machine's
PostgreSQL and Redis, batches of `bench/batch_post.lua`'s items posted through Falcon's `ASGIConductor` (no HTTP
server, no load generator: gunicorn's HTTP parsing is left out), CPU of this process (all its threads) and of its
PostgreSQL backends. Run two trees alternately (`PYTHONPATH`) to compare them; see bench/README.md.

usage: python -m bench.batch_api [SIZES] [BATCHES] [ROUNDS]     e.g. 1,100,1000 20 3
       (BENCH_DB and BENCH_REDIS_DB as for `make bench`; the database is created, migrated and dropped here)
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import redis
from falcon import testing

from bench import common
from bench.common import DATABASE_URL, REDIS_URL, bench_connect, log, median

WARM_UP = 3


def _body(size: int, tag: str) -> bytes:
    """A batch as `bench/batch_post.lua` writes it: fresh keys, the same ~160-character message."""
    items = [
        {
            "idempotency_key": f"{tag}-{i}",
            "recipient": f"user{i}@example.com",
            "channel": "log",
            "message": "Hello, this is a notification body of roughly one hundred and sixty characters used for the "
            "intake benchmark; it is padded to be realistic.....",
        }
        for i in range(size)
    ]
    return json.dumps({"notifications": items}).encode()


def _backends_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        stat = common._stat(pid)
        if stat is not None:
            total += stat[2] + stat[3]
    return total


async def _round(app: object, size: int, batches: int, tag: str) -> tuple[float, float]:
    """API and PostgreSQL CPU seconds for `batches` batches of `size` (after a warm-up)."""
    async with testing.ASGIConductor(app) as conductor:
        bodies = [_body(size, f"{tag}-{n}") for n in range(batches + WARM_UP)]
        headers = {"Content-Type": "application/json"}
        for body in bodies[:WARM_UP]:
            result = await conductor.simulate_post("/api/notifications/batch", body=body, headers=headers)
            assert result.status_code == 200, result.text
        pids = common.backends_of_bench()
        api0, pg0 = time.process_time(), _backends_cpu(pids)
        for body in bodies[WARM_UP:]:
            result = await conductor.simulate_post("/api/notifications/batch", body=body, headers=headers)
        api1, pg1 = time.process_time(), _backends_cpu(pids)
        assert result.status_code == 200, result.text
        assert all(r["status"] == 202 for r in json.loads(result.content)["results"])
    return api1 - api0, pg1 - pg0


def main() -> None:
    sizes = [int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "100,1000").split(",")]
    batches = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    env = {**common.bench_env(), "DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL}
    common.recreate_database()
    subprocess.run([sys.executable, "-m", "service.cli", "migrate"], env=env, check=True, capture_output=True)
    from actors.start_up import freeze_start_up_objects
    from service.app import create_app
    from service.settings import ServiceSettings

    app = create_app(ServiceSettings.from_env(env))
    freeze_start_up_objects()
    flush = redis.Redis.from_url(REDIS_URL)
    figures: dict[int, list[tuple[float, float]]] = {size: [] for size in sizes}
    try:
        for n in range(rounds):
            for size in sizes:
                with bench_connect() as conn:
                    conn.execute("TRUNCATE jobs, attempts, callbacks")
                flush.flushdb()
                count = batches * (1 if size >= 100 else max(1, 100 // size))
                api, pg = asyncio.run(_round(app, size, count, f"r{n}s{size}"))
                items = count * size
                figures[size].append((api / items * 1e6, pg / items * 1e6))
                log(f"round {n + 1} size {size:5d}: API {api / items * 1e6:7.1f} µs/item "
                    f"({api / count * 1e6:8.0f} µs/request), PostgreSQL {pg / items * 1e6:6.1f} µs/item, "
                    f"loadavg {os.getloadavg()[0]:.2f}")  # fmt: skip
    finally:
        flush.close()
        common.drop_database()
    for size, runs in figures.items():
        log(f"size {size:5d}: API median {median(a for a, _ in runs):7.1f} µs/item, "
            f"PostgreSQL {median(p for _, p in runs):6.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
