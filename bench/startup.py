"""Where a worker's start-up goes: `wjp worker` and bare Dramatiq started in turn with jobs already queued, the
time and the CPU of each process tree until its first job is done, and what `wjp worker` imports before it forks
its processes, by package (`python -X importtime`). Run apart from `make bench` (bench/README.md):

    .venv/bin/python -m bench.startup [REPETITIONS]     # 5 by default → bench/results/startup.json
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import time
from statistics import median

from bench import common, drain, harness

JOBS = 200
#: What `wjp worker` imports before Dramatiq forks its processes (service/cli.py, `cmd_worker`).
PRELOADED = "import service.cli, dramatiq.cli, actors.worker"
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+\d+ \|\s+(\S+)")


def first_job(kind: str) -> tuple[float, float]:
    """Seconds from spawning `kind`'s worker to its first job done, and the CPU seconds its tree used meanwhile."""
    from bench import peer_dramatiq  # after `harness`, which puts the bench's REDIS_URL in the environment

    if kind == "wjp":
        harness.reset_ledger(checkpoint=False)
        drain.enqueue(JOBS, "log", "bench-user", f"startup-{time.monotonic_ns()}", processes=1)
        argv = [harness.WJP, "worker", "--processes", str(harness.WORKER_PROCESSES),
                "--threads", str(harness.WORKER_THREADS)]  # fmt: skip
    else:
        harness.r.flushdb()
        for i in range(JOBS):
            peer_dramatiq.noop.send(i)
        argv = [common.PYTHON, "-m", "dramatiq", "bench.peer_dramatiq", "--processes", str(harness.WORKER_PROCESSES),
                "--threads", str(harness.WORKER_THREADS), "--queues", peer_dramatiq.QUEUE]  # fmt: skip
    queued = f"dramatiq:{peer_dramatiq.QUEUE}.msgs"
    with common.bench_connect() as conn:
        started = time.perf_counter()
        service = common.start(f"startup-{kind}", argv)
        with common.running(service):
            while True:
                done = sum(drain.finished_count(conn)) if kind == "wjp" else JOBS - harness.r.hlen(queued)
                if done > 0 or time.perf_counter() - started > 60:
                    return time.perf_counter() - started, common.tree_cpu_seconds(service.pid)
                time.sleep(0.005)


def import_profile() -> dict:
    """Self time of what `wjp worker` imports before the fork, by top-level package, in ms (one fresh run)."""
    out = subprocess.run([common.PYTHON, "-X", "importtime", "-c", PRELOADED], cwd=common.ROOT,
                         env=common.bench_env(), capture_output=True, text=True, check=True)  # fmt: skip
    by_package: collections.Counter[str] = collections.Counter()
    for line in out.stderr.splitlines():
        if match := _IMPORT_LINE.match(line):
            by_package[match.group(2).split(".")[0]] += int(match.group(1))
    total = sum(by_package.values())
    return {"total_ms": round(total / 1000, 1),
            "by_package_ms": {k: round(v / 1000, 1) for k, v in by_package.most_common(15)}}  # fmt: skip


def main() -> int:
    repetitions = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    harness.setup_database()
    runs: dict[str, list[tuple[float, float]]] = {"wjp": [], "dramatiq": []}
    try:
        for _ in range(repetitions):
            for kind in runs:
                runs[kind].append(first_job(kind))
                common.log(f"{kind}: first job after {runs[kind][-1][0]:.2f} s, {runs[kind][-1][1]:.2f} s of CPU")
    finally:
        common.drop_database()
        harness.r.flushdb()
    result = {
        kind: {"first_job_s": round(median(w for w, _ in values), 3), "cpu_s": round(median(c for _, c in values), 3),
               "runs": [(round(w, 3), round(c, 3)) for w, c in values]}
        for kind, values in runs.items()
    }  # fmt: skip
    result["imports_before_fork"] = import_profile()
    result["loadavg"] = common.loadavg()
    common.write_json(common.RESULTS / "startup.json", result)
    for kind in runs:
        common.log(f"{kind}: median first job after {result[kind]['first_job_s']} s, {result[kind]['cpu_s']} s of CPU")
    common.log(f"imports before the fork: {result['imports_before_fork']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
