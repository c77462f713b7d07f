"""`make bench`: intake, delivery, end-to-end latency, maintenance at scale and memory, side by side with the
baselines and peers, in one run on one machine. Writes `bench/results/latest.json`; see `bench/README.md`.

BENCH_QUICK=1 runs a reduced version (fewer jobs, shorter runs, 1 M rows only) in about 6 minutes.
Other knobs: BENCH_API_WORKERS (gunicorn workers for our API and both baselines, default 4),
BENCH_INTAKE_REPS, BENCH_INTAKE_SECONDS, BENCH_INTAKE_REFERENCE, BENCH_ASYNC_WORKER, BENCH_SUSTAINABLE_*,
BENCH_DRAIN_JOBS, BENCH_E2E_SECONDS, BENCH_SCALES (e.g. "1000000"),
BENCH_ONLY (comma-separated phases: intake, batch, ratelimit, drain, peers, e2e, sustainable, flow_cost, noisy,
callback_cost, maintenance),
BENCH_KEEP_DB=1.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from datetime import UTC, datetime

from bench import batch, callbacks, common, drain, e2e, flow, maintenance, ratelimit, report, sustainable
from bench import intake as intake_module
from bench.common import QUICK, RESULTS, log, running, start
from bench.harness import WJP, api_server, r, reset_ledger, setup_database, worker
from bench.intake import INTAKE_SECONDS, wrk
from bench.report import dig

ALL_PHASES = "intake,batch,ratelimit,drain,peers,e2e,sustainable,flow_cost,noisy,callback_cost,maintenance"
PHASES = [p for p in os.environ.get("BENCH_ONLY", ALL_PHASES).split(",") if p]


def main() -> int:
    started = time.time()
    results: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "quick": QUICK}
    results["loadavg_before"] = common.loadavg()
    b0 = common.busy_seconds()
    time.sleep(2)
    b1 = common.busy_seconds()
    results["machine_busy_cores_before"] = round((b1[0] - b0[0]) / ((b1[1] - b0[1]) / os.cpu_count()), 2)
    log(f"loadavg {results['loadavg_before']}, other users busy {results['machine_busy_cores_before']} cores; "
        f"quick={QUICK}; database {common.DB_NAME}; Redis db {common.REDIS_DB}")  # fmt: skip
    setup_database()
    results["machine"] = report.machine()
    try:
        if "intake" in PHASES:
            results["intake"] = intake_module.phase_intake(intake_module.Harness(reset_ledger, api_server, r))
        if "batch" in PHASES:
            results["batch"] = batch.phase_batch(batch.Harness(reset_ledger, api_server, wrk))
        if "ratelimit" in PHASES:
            rl_harness = ratelimit.Harness(reset_ledger, api_server, wrk, WJP, INTAKE_SECONDS)
            results["ratelimit"] = ratelimit.phase_ratelimit(rl_harness)
        if "drain" in PHASES or "peers" in PHASES:
            drains, peers = drain.phase_delivery("drain" in PHASES, "peers" in PHASES)
            results.update({"drain": drains} if drains else {}, **({"peers": peers} if peers else {}))
        if "e2e" in PHASES:
            max_rps = dig(results, ("intake", "intake", "rps")) or float(os.environ.get("BENCH_E2E_MAX_RPS", "1000"))
            results["e2e"] = e2e.phase_e2e(max_rps)
        if "sustainable" in PHASES:
            s_harness = sustainable.Harness(reset_ledger, api_server, worker)
            results["sustainable"] = sustainable.phase_sustainable(s_harness)
        harness = flow.Harness(reset_ledger, api_server, worker, drain.drain, drain.webhook_drain, drain.DRAIN_JOBS)
        results.update(flow.run_phases(PHASES, harness))
        if "callback_cost" in PHASES:
            results["callback_cost"] = callbacks.phase_callback_cost(harness, start, running)
        if "maintenance" in PHASES:
            results["maintenance"] = maintenance.phase_maintenance()
    finally:
        if os.environ.get("BENCH_KEEP_DB", "") in ("", "0"):
            common.drop_database()
        r.flushdb()
    results["loadavg_after"] = common.loadavg()
    results["duration_s"] = round(time.time() - started)
    final = {**report.summarise(results), "meta": {k: results[k] for k in (
        "date", "quick", "loadavg_before", "loadavg_after", "machine_busy_cores_before", "duration_s", "machine")},
        "details": {k: results.get(k) for k in ("intake", "batch", "ratelimit", "drain", "peers", "e2e", "sustainable",
                                                 "noisy", "flow_cost", "callback_cost", "maintenance")}}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    common.write_json(RESULTS / "latest.json", final)
    table = report.render_table(final)
    (RESULTS / "latest.md").write_text(table + "\n")
    print(table)
    log(f"done in {results['duration_s']} s; wrote {RESULTS / 'latest.json'}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
