"""`make bench`, batch intake (issue 20): notifications/s through POST /api/notifications/batch in batches of 100
and of 1,000, next to single-POST intake measured in the same invocation on the same server. Called from
bench.run; see bench/README.md, "Batch intake".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench import common
from bench.common import QUICK, CpuMeter, Service, bench_connect, log, median, target

SIZES = (100, 1000)
REPS = int(os.environ.get("BENCH_BATCH_REPS", "1" if QUICK else "3"))
#: Not shortened by BENCH_QUICK: wrk counts the answers within the window, and a batch of 1,000 takes about a
#: second under load, so a short window loses a large share to its first second.
SECONDS = int(os.environ.get("BENCH_BATCH_SECONDS", "10"))
#: Concurrent connections per kind of run. Single POSTs need many to keep 4 workers × 8 threads busy (as in the
#: intake phase); a batch keeps a thread busy for long, but too few connections may all land on one worker.
CONNECTIONS = {"single": 32, 100: 16, 1000: 8}
#: Batch intake must reach this many times the single POST's notifications/s (issue 20).
TARGET_RATIO = 10.0


@dataclass(frozen=True)
class Harness:
    """What bench.run lends this phase: its ledger reset, its API server and its wrk runner."""

    reset_ledger: Callable[[], None]
    api_server: Callable[..., tuple[Service, int]]
    wrk: Callable[..., tuple[dict, float]]


def _wrk_options(kind: str | int) -> dict:
    if kind == "single":
        return {"connections": CONNECTIONS["single"]}
    return {
        "script": "batch_post.lua",
        "path": "/api/notifications/batch",
        "connections": CONNECTIONS[kind],
        "args": (str(kind),),
    }


def _run(h: Harness, service: Service, port: int, kind: str | int, rep: int) -> dict:
    per_request = 1 if kind == "single" else int(kind)
    h.wrk(port, 2, f"warm-b{kind}-{rep}", **_wrk_options(kind))
    h.reset_ledger()
    time.sleep(1)
    tag = f"b{kind}-{rep}"
    with CpuMeter({"gunicorn": service.tree()}, common.backends_of_bench()) as meter:
        figures, wrk_cpu = h.wrk(port, SECONDS, tag, **_wrk_options(kind))
    with bench_connect() as conn:
        (rows,) = conn.execute("SELECT count(*) FROM jobs").fetchone()
    notifications = figures["requests"] * per_request
    cores = meter.cores()
    cores["wrk"] = round(wrk_cpu / meter.wall, 3)
    cores["unaccounted_other_users"] = round(cores["unaccounted_other_users"] - cores["wrk"], 3)
    run = {
        "notifications_per_s": round(figures["rps"] * per_request, 1),
        "requests_per_s": figures["rps"],
        "p50_ms": figures["p50_ms"],
        "p99_ms": figures["p99_ms"],
        "non_2xx": figures["non_2xx"],
        "socket_errors": figures["socket_errors"],
        # Rows in the ledger against notifications answered: wrk stops mid-request, so a few more rows than answers.
        "rows": rows,
        "answered_notifications": notifications,
        "gunicorn_cpu_us_per_notification": round(cores["gunicorn"] * meter.wall / max(notifications, 1) * 1e6, 1),
        # What the machine's other users cannot move much: CPU of the API, our PostgreSQL backends and Redis.
        "cpu_us_per_notification": round(
            sum(cores[k] for k in ("gunicorn", "postgres_bench_backends", "redis")) * meter.wall
            / max(notifications, 1) * 1e6, 1
        ),
        "cores": cores,
    }
    name = "single POST" if kind == "single" else f"batch of {kind}"
    log(f"  rep {rep + 1} {name:14s} {run['notifications_per_s']:9.0f} notifications/s "
        f"({run['requests_per_s']:.0f} req/s, p99 {run['p99_ms']:.1f} ms, "
        f"CPU µs/notification: gunicorn {run['gunicorn_cpu_us_per_notification']}, "
        f"with PostgreSQL and Redis {run['cpu_us_per_notification']}) cores {cores}")  # fmt: skip
    return run


def phase_batch(h: Harness) -> dict:
    """Single POSTs and batches of each size on one `wjp serve`, in rotated order each repetition."""
    kinds: list[str | int] = ["single", *SIZES]
    log(f"batch: single POST vs batches of {', '.join(map(str, SIZES))} on one wjp serve, {REPS} rep(s) × "
        f"{SECONDS}s, connections {CONNECTIONS}")  # fmt: skip
    runs: dict[str | int, list[dict]] = {kind: [] for kind in kinds}
    service, port = h.api_server("batch-api")
    with common.running(service):
        for rep in range(REPS):
            for kind in kinds[rep % 3 :] + kinds[: rep % 3]:
                runs[kind].append(_run(h, service, port, kind, rep))
    out: dict = {"reps": REPS, "seconds": SECONDS, "connections": {str(k): v for k, v in CONNECTIONS.items()}}
    single = runs["single"]
    out["single"] = _summary(single)
    for size in SIZES:
        pairs = list(zip(runs[size], single, strict=True))
        ratios = [b["notifications_per_s"] / s["notifications_per_s"] for b, s in pairs]
        cpu = [s["cpu_us_per_notification"] / b["cpu_us_per_notification"] for b, s in pairs]
        out[f"batch_{size}"] = {**_summary(runs[size]), "ratio_vs_single": round(median(ratios), 2),
                                "ratios_per_rep": [round(x, 2) for x in ratios],
                                "cpu_ratio_vs_single": round(median(cpu), 2)}  # fmt: skip
    return out


def _summary(runs: list[dict]) -> dict:
    return {
        "notifications_per_s": round(median(r["notifications_per_s"] for r in runs), 1),
        "gunicorn_cpu_us_per_notification": round(median(r["gunicorn_cpu_us_per_notification"] for r in runs), 1),
        "cpu_us_per_notification": round(median(r["cpu_us_per_notification"] for r in runs), 1),
        "runs": runs,
    }


def targets(res: dict) -> dict:
    batch = res.get("batch") or {}
    return {
        f"batch_{size}_vs_single": target((batch.get(f"batch_{size}") or {}).get("ratio_vs_single"), ">=", TARGET_RATIO)
        for size in SIZES
    }


def table(res: dict) -> list[str]:
    """Rows for bench.run's table; none when the phase did not run."""
    details = (res.get("details") or {}).get("batch")
    if not details:
        return []
    single = details["single"]["notifications_per_s"]
    single_cpu = details["single"]["cpu_us_per_notification"]
    lines = ["", "| batch intake | notifications/s (CPU µs each) | single POST, same run | ratio (CPU ratio) | target "
             "| pass |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for size in SIZES:
        figures, verdict = details[f"batch_{size}"], res["targets"][f"batch_{size}_vs_single"]
        lines.append(f"| batches of {size:,} | {figures['notifications_per_s']:,.0f} "
                     f"({figures['cpu_us_per_notification']:,.0f}) | {single:,.0f} ({single_cpu:,.0f}) | "
                     f"{figures['ratio_vs_single']:.1f} ({figures['cpu_ratio_vs_single']:.1f}) | "
                     f"≥ {TARGET_RATIO:g} | {verdict['pass']} |")  # fmt: skip
    return lines
