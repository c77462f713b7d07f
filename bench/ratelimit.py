"""`make bench`, producer rate limits (issue 24): what a per-key limit set high enough not to bite costs intake.
Called from bench.run; see bench/README.md, "Producer rate limits".

ratelimit: `wjp serve` under wrk, every POST authenticated with one producer key, in pairs of runs made back to
back: the key without a rate (no limiter on the path) and the same key with a rate far above what the machine can
take (the limiter consulted on every POST, never refusing). Ratio = the median of the pairs' limited / unlimited
req/s; target ≥ 0.95.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from bench import common
from bench.common import QUICK, CpuMeter, Service, bench_connect, log, median, target

PAIRS = int(os.environ.get("BENCH_RATELIMIT_PAIRS", "3" if QUICK else "5"))
#: Notifications per second per key: orders of magnitude above what the 2-core machine's intake reaches.
NEVER_BITES = 1_000_000
KEY_NAME = "bench-rate"
CPU_PER_REQ = "api_and_redis_cpu_us_per_req"


@dataclass(frozen=True)
class Harness:
    """What bench.run lends this phase: its ledger reset, API server, wrk run and the `wjp` command."""

    reset_ledger: Callable[[], None]
    api_server: Callable[..., tuple[Service, int]]
    wrk: Callable[..., tuple[dict, float]]
    wjp: str
    seconds: float


def phase_ratelimit(h: Harness) -> dict:
    log(f"ratelimit: {PAIRS} pair(s) of intake runs with one producer key, without a rate and at {NEVER_BITES:,}/s")
    token = _create_key(h.wjp)
    runs: dict[str, list[dict]] = {"unlimited": [], "limited": []}
    try:
        for pair in range(PAIRS):
            order = ["unlimited", "limited"] if pair % 2 == 0 else ["limited", "unlimited"]
            for name in order:
                _run_wjp(h.wjp, "api-key", "set-rate", KEY_NAME, "none" if name == "unlimited" else str(NEVER_BITES))
                service, port = h.api_server(f"ratelimit-{name}")
                with common.running(service):
                    h.wrk(port, 2, f"warm-rl-{name}-{pair}", token)
                    h.reset_ledger()
                    meter = CpuMeter({"gunicorn": service.tree()}, common.backends_of_bench())
                    with meter:
                        figures, _ = h.wrk(port, h.seconds, f"rl-{name}-{pair}", token)
                cores = meter.cores()
                # The limiter's cost is in the API's CPU and in Redis's: per request, both together.
                figures[CPU_PER_REQ] = round(
                    (cores["gunicorn"] + cores["redis"]) * meter.wall / max(figures["requests"], 1) * 1e6
                )
                if figures["non_2xx"]:
                    raise RuntimeError(f"ratelimit {name}: {figures['non_2xx']} answers were not 2xx")
                runs[name].append(figures)
                log(f"  pair {pair + 1} {name:9s} {figures['rps']:8.0f} req/s  p50 {figures['p50_ms']:.2f} ms  "
                    f"p99 {figures['p99_ms']:.2f} ms  API + Redis CPU {figures[CPU_PER_REQ]} µs/req, "
                    f"other users {cores['unaccounted_other_users']} cores")  # fmt: skip
    finally:
        with bench_connect() as conn:  # no key left behind: the other phases post without one
            conn.execute("DELETE FROM api_keys")
    pairs = list(zip(runs["limited"], runs["unlimited"], strict=True))
    ratios = [lim["rps"] / unl["rps"] for lim, unl in pairs]
    return {
        "cpu_per_req_ratio": round(median(lim[CPU_PER_REQ] / unl[CPU_PER_REQ] for lim, unl in pairs), 3),
        "rps": {name: round(median(f["rps"] for f in figures), 1) for name, figures in runs.items()},
        "p99_ms": {name: round(median(f["p99_ms"] for f in figures), 2) for name, figures in runs.items()},
        "ratio": round(median(ratios), 3),
        "ratios_per_pair": [round(x, 3) for x in ratios],
        "rate_set": NEVER_BITES,
        "runs": runs,
    }


def _create_key(wjp: str) -> str:
    with bench_connect() as conn:
        conn.execute("DELETE FROM api_keys")
    return _run_wjp(wjp, "api-key", "create", KEY_NAME).strip().splitlines()[-1]


def _run_wjp(wjp: str, *args: str) -> str:
    done = subprocess.run([wjp, *args], env=common.bench_env(), capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"wjp {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def summary(res: dict) -> dict:
    """The top-level fields of latest.json for this phase, and its target."""
    rl = res.get("ratelimit") or {}
    return {
        "ratelimit": {k: rl.get(k) for k in ("rps", "p99_ms", "ratio", "ratios_per_pair", "cpu_per_req_ratio")},
        "targets": {"ratelimit_intake_cost": target(rl.get("ratio"), ">=", 0.95)},
    }


def table(res: dict) -> list[str]:
    """A row for latest.md."""
    rl, t = res["ratelimit"], res["targets"]["ratelimit_intake_cost"]
    if not rl.get("rps"):
        return []
    fmt = lambda v, nd=0: "–" if v is None else f"{v:,.{nd}f}"  # noqa: E731
    return [
        "",
        "Producer rate limits:",
        "",
        "| figure | key without a rate | same key, rate never reached | ratio | target | pass |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| intake req/s (p99 ms) | {fmt(rl['rps']['unlimited'])} ({fmt(rl['p99_ms']['unlimited'], 1)}) | "
        f"{fmt(rl['rps']['limited'])} ({fmt(rl['p99_ms']['limited'], 1)}) | {fmt(rl['ratio'], 3)} | ≥ 0.95 | "
        f"{t['pass']} |",
        f"| API + Redis CPU per request, limited / unlimited | | | {fmt(rl['cpu_per_req_ratio'], 3)} | | |",
    ]
