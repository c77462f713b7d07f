"""`make bench`, intake: `wjp serve` under wrk next to the two baselines (bench/README.md, Method 1).

The baselines of the targets run on the **asyncio server model** (bench/baseline_asgi.py under gunicorn's worker
class ASYNC_WORKER_CLASS: the product's own, from service/gunicorn_conf.py, unless BENCH_ASYNC_WORKER names another);
the threaded ones (bench/baseline_app.py under gthread) are kept as reference rows. Every server gets the product's
service/gunicorn_conf.py and the same number of workers; one runs at a time.
"""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from bench import common
from bench.common import (
    BENCH,
    PYTHON,
    QUICK,
    REFERENCE_GTHREADS,
    ROOT,
    CpuMeter,
    Service,
    bench_connect,
    log,
    median,
    running,
    start,
)

API_WORKERS = int(os.environ.get("BENCH_API_WORKERS", "4"))
INTAKE_REPS = int(os.environ.get("BENCH_INTAKE_REPS", "1" if QUICK else "5"))
INTAKE_SECONDS = int(os.environ.get("BENCH_INTAKE_SECONDS", "5" if QUICK else "10"))
WRK_THREADS, WRK_CONNECTIONS = 2, 32
GUNICORN_CONF = ROOT / "service" / "gunicorn_conf.py"
#: The gunicorn worker class of the asyncio baselines: the product's own unless BENCH_ASYNC_WORKER names another.
ASYNC_WORKER_CLASS = os.environ.get("BENCH_ASYNC_WORKER") or runpy.run_path(str(GUNICORN_CONF))["worker_class"]
#: Seconds a server may take to answer after its start: ~2 s on a quiet machine, over 20 s at a load average of 14.
SERVER_START_TIMEOUT = 60.0
#: Targets (issue 22): ours over the asyncio baselines (a) and (b), median of the per-repetition ratios.
TARGET_VS_INSERT, TARGET_VS_NAIVE = 1.5, 2.0

#: name → (gunicorn app, server model); the first two are the targets' baselines, the last two reference rows.
BASELINES = {
    "baseline_insert": ("bench.baseline_asgi:insert_app()", "asyncio"),
    "baseline_naive": ("bench.baseline_asgi:naive_app()", "asyncio"),
    "baseline_insert_threaded": ("bench.baseline_app:insert_app", "threaded"),
    "baseline_naive_threaded": ("bench.baseline_app:naive_app", "threaded"),
}
#: Whether the threaded reference rows run (not in BENCH_QUICK, which must stay within a few minutes).
REFERENCE_ROWS = os.environ.get("BENCH_INTAKE_REFERENCE", "0" if QUICK else "1") not in ("", "0")


@dataclass(frozen=True)
class Harness:
    """What bench.run lends this phase: its ledger reset, its API server and its Redis client."""

    reset_ledger: Callable[[], None]
    api_server: Callable[..., tuple[Service, int]]
    redis: redis.Redis


_WRK_LATENCY = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def wrk(
    port: int,
    seconds: float,
    tag: str,
    api_key: str | None = None,
    *,
    script: str = "post.lua",
    path: str = "/api/notifications",
    connections: int = WRK_CONNECTIONS,
    args: tuple[str, ...] = (),
) -> tuple[dict, float]:
    """Run wrk against POST `path` (a single notification per request by default; as the producer of `api_key` if
    given); return its figures and its own CPU seconds."""
    argv = [
        "wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds}s", "--latency",
        "-s", str(BENCH / script), f"http://127.0.0.1:{port}{path}", "--", tag,
        *([api_key] if api_key else []), *args,
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    lat = {m.group(1): float(m.group(2)) * unit[m.group(3)] for m in _WRK_LATENCY.finditer(out)}
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise RuntimeError(f"wrk failed:\n{out}")
    return {
        "rps": float(rps.group(1)),
        "p50_ms": lat.get("50"),
        "p99_ms": lat.get("99"),
        "requests": int(total.group(1)) if total else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
    }, usage.ru_utime + usage.ru_stime


def gunicorn_settings() -> str:
    """The product's gunicorn worker settings."""
    conf = runpy.run_path(str(GUNICORN_CONF))
    threads = f" × {conf['threads']} threads" if conf.get("worker_class", "sync") == "gthread" else ""
    return f"{conf.get('worker_class', 'sync')} workers{threads}"


def server_model_args(model: str) -> list[str]:
    """gunicorn options over the product's config for a baseline's server model."""
    if model == "asyncio":
        return ["--worker-class", ASYNC_WORKER_CLASS]
    # The threaded reference stays on gthread with the thread count the product used there, whatever the product
    # runs now.
    return ["--worker-class", "gthread", "--threads", str(REFERENCE_GTHREADS)]


def baseline_server(
    name: str, app: str, model: str, *, workers: int = API_WORKERS, options: tuple[str, ...] = ()
) -> tuple[Service, int]:
    """A baseline app under gunicorn with the product's config and worker count, on the given server model (gunicorn
    `options` after it, as ours get them through GUNICORN_CMD_ARGS)."""
    port = common.free_port()
    argv = [
        PYTHON, "-m", "gunicorn", "--config", str(GUNICORN_CONF), *server_model_args(model), *options,
        "--bind", f"127.0.0.1:{port}", "--workers", str(workers), app,
    ]  # fmt: skip
    service = start(name, argv)
    try:
        common.wait_http(port, "/", timeout=SERVER_START_TIMEOUT)
    except RuntimeError:
        service.stop()
        raise
    return service, port


def measure(h: Harness, name: str, rep: int, service: Service, port: int) -> tuple[dict, dict]:
    """One measured wrk run on a started server; returns its figures and (for ours) the workers' RSS."""
    wrk(port, 2, f"warm-{name}-{rep}")  # connections, pools, statement caches
    h.reset_ledger()
    time.sleep(1)
    with bench_connect() as conn:
        db0 = common.db_counters(conn)
        rc0 = common.redis_commandstats(h.redis)
        meter = CpuMeter({"gunicorn": service.tree()}, common.backends_of_bench())
        with meter:
            figures, wrk_cpu = wrk(port, INTAKE_SECONDS, f"{name}-{rep}")
        time.sleep(0.6)  # pg_stat flush interval
        db1 = common.db_counters(conn)
        rc1 = common.redis_commandstats(h.redis)
    rss = {f"pid{p}": round(common.rss_mb(p), 1) for p in service.children()} if name == "intake" else {}
    cores = meter.cores()
    cores["wrk"] = round(wrk_cpu / meter.wall, 3)
    cores["unaccounted_other_users"] = round(cores["unaccounted_other_users"] - cores["wrk"], 3)
    n = max(figures["requests"], 1)
    figures["cores"] = cores
    figures["gunicorn_cpu_us_per_req"] = round(cores["gunicorn"] * meter.wall / n * 1e6)
    figures["pg_commits_per_req"] = round(common.diff(db1, db0).get("xact_commit", 0) / n, 2)
    figures["redis_calls_per_req"] = {k: round(v / n, 2) for k, v in common.diff(rc1, rc0).items() if v / n >= 0.05}
    return figures, rss


def phase_intake(h: Harness) -> dict:
    log(f"intake: ours ({gunicorn_settings()}), baselines (a) and (b) on gunicorn -k {ASYNC_WORKER_CLASS}"
        f"{' and, for reference, on gthread' if REFERENCE_ROWS else ''}; {API_WORKERS} workers each, one server at a "
        f"time; wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}, {INTAKE_REPS} rep(s) × {INTAKE_SECONDS}s")  # fmt: skip
    # One server runs at a time, started afresh and warmed up for each run: several at once held more PostgreSQL
    # connections than a stock server allows (bench/README.md).
    servers: dict[str, Callable[[], tuple[Service, int]]] = {"intake": lambda: h.api_server("intake-api")}
    for name, (app, model) in BASELINES.items():
        if model == "threaded" and not REFERENCE_ROWS:
            continue
        servers[name] = lambda name=name, app=app, model=model: baseline_server(name.replace("_", "-"), app, model)
    runs: dict[str, list[dict]] = {name: [] for name in servers}
    rss: dict[str, float] = {}
    order = list(servers)
    for rep in range(INTAKE_REPS):
        shift = rep % len(order)
        for name in order[shift:] + order[:shift]:
            service, port = servers[name]()
            with running(service):
                figures, server_rss = measure(h, name, rep, service, port)
            rss = server_rss or rss
            runs[name].append(figures)
            log(f"  rep {rep + 1} {name:24s} {figures['rps']:8.0f} req/s  p50 {figures['p50_ms']:.2f} ms  "
                f"p99 {figures['p99_ms']:.2f} ms  non-2xx {figures['non_2xx']}  cores {figures['cores']}")  # fmt: skip
    out: dict = {}
    for name, figures in runs.items():
        out[name] = {
            "rps": round(median(f["rps"] for f in figures), 1),
            "p50_ms": round(median(f["p50_ms"] for f in figures), 3),
            "p99_ms": round(median(f["p99_ms"] for f in figures), 3),
            "runs_rps": [round(f["rps"]) for f in figures],
            "median_run": sorted(figures, key=lambda f: f["rps"])[len(figures) // 2],
        }
    per_rep: dict[str, list[float]] = {}
    for name in [n for n in runs if n != "intake"]:
        ratios = [a["rps"] / b["rps"] for a, b in zip(runs["intake"], runs[name], strict=True)]
        out["intake"][f"ratio_vs_{name}"] = round(median(ratios), 3)
        per_rep[f"vs_{name}"] = [round(x, 3) for x in ratios]
    out["intake"]["ratios_per_rep"] = per_rep
    out["intake"]["rss_mb_after"] = rss
    out["settings"] = {
        "ours": f"wjp serve: service/gunicorn_conf.py ({gunicorn_settings()}), --workers {API_WORKERS}",
        "baselines": f"service/gunicorn_conf.py with --worker-class {ASYNC_WORKER_CLASS} (asyncio: (a), (b)) or "
        f"gthread (threaded reference rows), --workers {API_WORKERS}; one server at a time",
        "wrk": f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{INTAKE_SECONDS}s --latency -s bench/post.lua",
        "reps": INTAKE_REPS,
    }
    return out


def targets(intake: dict) -> dict:
    ours = intake.get("intake", {})
    return {
        "intake_vs_baseline_insert": common.target(ours.get("ratio_vs_baseline_insert"), ">=", TARGET_VS_INSERT,
                                                   server_model=f"-k {ASYNC_WORKER_CLASS}"),
        "intake_vs_baseline_naive": common.target(ours.get("ratio_vs_baseline_naive"), ">=", TARGET_VS_NAIVE,
                                                  server_model=f"-k {ASYNC_WORKER_CLASS}"),
    }  # fmt: skip


def table_rows(res: dict) -> list[str]:
    """The intake rows of the summary table: ours against (a) and (b) on the asyncio model, then the threaded."""
    fmt = lambda v, nd=0: "–" if v is None else f"{v:,.{nd}f}"  # noqa: E731
    i, t, ref = res["intake"], res["targets"], res.get("info_ratios", {})

    def figures(d: dict) -> str:
        return f"{fmt(d.get('rps'))} ({fmt(d.get('p50_ms'), 1)} / {fmt(d.get('p99_ms'), 1)})"

    ta, tb = t["intake_vs_baseline_insert"], t["intake_vs_baseline_naive"]
    ka = f"-k {ASYNC_WORKER_CLASS}"
    return [
        f"| intake req/s (p50 / p99 ms) | {figures(i)} | (a) bare INSERT, {ka} {figures(res['baseline_insert'])} | "
        f"{fmt(ta['measured'], 2)} | ≥ {TARGET_VS_INSERT} | {ta['pass']} |",
        f"| | | (b) INSERT + Dramatiq send, {ka} {figures(res['baseline_naive'])} | {fmt(tb['measured'], 2)} | "
        f"≥ {TARGET_VS_NAIVE} | {tb['pass']} |",
        f"| | | reference: (a) on gthread {figures(res.get('baseline_insert_threaded', {}))} | "
        f"{fmt(ref.get('intake_vs_baseline_insert_threaded'), 2)} | – | – |",
        f"| | | reference: (b) on gthread {figures(res.get('baseline_naive_threaded', {}))} | "
        f"{fmt(ref.get('intake_vs_baseline_naive_threaded'), 2)} | – | – |",
    ]
