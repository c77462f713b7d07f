"""`make bench`, status callbacks (issue 20): what a callback on every job costs the `log` drain. Called from
bench.run; see bench/README.md, "Status callbacks".

callback_cost: the drain of `log` jobs without callbacks, and the same with a `callback_url` on every job to a fast
local receiver (bench/sink.py), in alternating pairs; the drain with callbacks ends when the last callback is
delivered, and the ratio (the target) is its rate over the one without. Beside it: the jobs' own drain (all jobs
finished) with over without callbacks, and the CPU a callback costs each process (worker, PostgreSQL, Redis, the
receiver), from the difference of the pair's CPU per job.
"""

from __future__ import annotations

import os
import re

from bench import common
from bench.common import PYTHON, QUICK, log, median, target
from bench.flow import Harness

CALLBACK_COST_PAIRS = int(os.environ.get("BENCH_CALLBACK_COST_PAIRS", "1" if QUICK else "2"))
#: The target: the drain with a callback on every job keeps at least this share of the drain without.
TARGET_RATIO = 0.9
#: The processes whose CPU a callback adds to a job's (the `cores` groups of a drain).
CPU_GROUPS = ("worker", "postgres_bench_backends", "redis", "sink")


def cpu_us_per_job(run: dict, group: str) -> float:
    """A process group's CPU per job of a drain, µs: over the meter's time (from the first job finished on) and the
    jobs finished in it, as the worker's own `worker_cpu_us_per_job` (until 2026-12-04 13:55 over the whole drain's
    time, the worker's start-up included, which made every group's figure 1.1–1.5 × too high)."""
    worker = run["cores"].get("worker") or 0.0
    if not worker or not run.get("worker_cpu_us_per_job"):
        return 0.0
    return (run["cores"].get(group) or 0.0) * run["worker_cpu_us_per_job"] / worker


def phase_callback_cost(h: Harness, start: object, running: object) -> dict:
    """Pairs of `log` drains, without and with a callback per job, the order swapped every pair against drift."""
    log(f"callback_cost: {CALLBACK_COST_PAIRS} pair(s) × `log` drain of {h.drain_jobs} jobs, without and with a "
        "status callback on every job to a local sink, in alternating order")  # fmt: skip
    port = common.free_port()
    sink = start("callback-sink", [PYTHON, "-m", "bench.sink", str(port), "2"])  # type: ignore[operator]
    runs: dict[str, list[dict]] = {"without": [], "with": []}
    with running(sink):  # type: ignore[operator]
        common.wait_http(port, "/")
        url = f"http://127.0.0.1:{port}/status"
        for pair in range(CALLBACK_COST_PAIRS):
            order = ("without", "with") if pair % 2 == 0 else ("with", "without")
            for setting in order:
                callback = {"callback_url": url} if setting == "with" else {}
                runs[setting].append(h.drain(f"callback_cost_{setting}", h.drain_jobs, "log", "bench-user",
                                             extra_groups={"sink": sink.tree()}, WJP_WEBHOOK_ALLOW_PRIVATE="true",
                                             **callback))  # type: ignore[attr-defined]  # fmt: skip
    served = re.findall(r"served=(\d+)", sink.log_path.read_text())  # type: ignore[attr-defined]
    pairs = list(zip(runs["with"], runs["without"], strict=True))
    ratios = [w["jobs_per_s"] / wo["jobs_per_s"] for w, wo in pairs if w["jobs_per_s"] and wo["jobs_per_s"]]
    cpu = [w["worker_cpu_us_per_job"] / wo["worker_cpu_us_per_job"] for w, wo in pairs
           if w["worker_cpu_us_per_job"] and wo["worker_cpu_us_per_job"]]  # fmt: skip
    jobs_ratios = [w["jobs_done_per_s"] / wo["jobs_per_s"] for w, wo in pairs
                   if w.get("jobs_done_per_s") and wo["jobs_per_s"]]  # fmt: skip
    per_callback = {group: round(median(cpu_us_per_job(w, group) - cpu_us_per_job(wo, group) for w, wo in pairs))
                    for group in CPU_GROUPS}  # fmt: skip
    without = {group: round(median(cpu_us_per_job(wo, group) for _, wo in pairs)) for group in CPU_GROUPS}
    out = {
        "pairs": CALLBACK_COST_PAIRS,
        "jobs": h.drain_jobs,
        "ratio": round(median(ratios), 3) if ratios else None,
        "ratios_per_pair": [round(x, 3) for x in ratios],
        "jobs_ratio": round(median(jobs_ratios), 3) if jobs_ratios else None,
        "jobs_ratios_per_pair": [round(x, 3) for x in jobs_ratios],
        "cpu_us_per_callback": per_callback,
        "cpu_us_per_job_without": without,
        "cpu_per_job_ratio": round(median(cpu), 3) if cpu else None,
        "jobs_per_s_without": [r["jobs_per_s"] for r in runs["without"]],
        "jobs_per_s_with": [r["jobs_per_s"] for r in runs["with"]],
        "jobs_done_per_s_with": [r.get("jobs_done_per_s") for r in runs["with"]],
        "worker_cpu_us_per_job_without": [r["worker_cpu_us_per_job"] for r in runs["without"]],
        "worker_cpu_us_per_job_with": [r["worker_cpu_us_per_job"] for r in runs["with"]],
        "other_users_cores": {s: [r["cores"].get("unaccounted_other_users") for r in runs[s]] for s in runs},
        "sink_served": sum(map(int, served[-2:])) if served else None,
        "runs": runs,
    }
    log(f"  callback_cost: with/without {out['ratios_per_pair']} (jobs/s with, to the last callback "
        f"{out['jobs_per_s_with']}, jobs alone {out['jobs_done_per_s_with']}; without {out['jobs_per_s_without']}); "
        f"worker CPU per job with/without {out['cpu_per_job_ratio']}; CPU µs per callback {per_callback}, per job "
        f"without {out['cpu_us_per_job_without']}")  # fmt: skip
    return out


def summary(res: dict) -> dict:
    """The target of latest.json for this phase: the drain to the last callback delivered (bench/README.md)."""
    c = res.get("callback_cost") or {}
    return {"targets": {"callback_cost": target(c.get("ratio"), ">=", TARGET_RATIO, jobs_ratio=c.get("jobs_ratio"))}}


def table(res: dict) -> list[str]:
    """Rows for latest.md."""
    c = (res.get("details") or {}).get("callback_cost")
    if not c:
        return []
    fmt = lambda v, nd=0: "–" if v is None else f"{v:,.{nd}f}"  # noqa: E731
    passed = c["ratio"] is not None and c["ratio"] >= TARGET_RATIO
    return [
        "",
        "Status callbacks:",
        "",
        "| figure | without | with a callback per job | ratio | target | pass |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| `log` drain jobs/s, to the last callback delivered (worker CPU per job with / without: "
        f"{fmt(c['cpu_per_job_ratio'], 2)}) | {fmt(median(c['jobs_per_s_without']))} | "
        f"{fmt(median(c['jobs_per_s_with']))} | {fmt(c['ratio'], 2)} | ≥ {TARGET_RATIO} | {passed} |",
        f"| the jobs' own drain, all jobs finished (callbacks still queued) | {fmt(median(c['jobs_per_s_without']))} | "
        f"{fmt(median(c['jobs_done_per_s_with']))} | {fmt(c.get('jobs_ratio'), 2)} | – | – |",
        f"| CPU µs per callback (worker, PostgreSQL, Redis, receiver) / per job without | "
        f"{_by_group(c.get('cpu_us_per_job_without'))} | {_by_group(c.get('cpu_us_per_callback'))} | – | – | – |",
    ]


def _by_group(cpu: dict | None) -> str:
    return "–" if not cpu else " / ".join(f"{cpu.get(group, 0):,.0f}" for group in CPU_GROUPS)
