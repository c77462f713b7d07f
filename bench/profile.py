"""Where the CPU goes: py-spy on our API workers under wrk, or on `wjp worker` during a drain.

usage: python -m bench.profile intake [SECONDS]        (gunicorn workers of `wjp serve` under wrk -c32)
       python -m bench.profile drain [JOBS] [CHANNEL]  (the two Dramatiq worker processes during a drain)
       python -m bench.profile callbacks [JOBS]        (the same, `log` jobs with a status callback each, until
                                                       the last callback is delivered)
       python -m bench.profile e2e RATE [SECONDS]      (both, `wjp serve` and `wjp worker` together, under
                                                       bench.openloop POSTing RATE/s: e2e-api and e2e-worker)
       python -m bench.profile summary FILE            (re-summarise a collapsed-stack file)

Writes py-spy's collapsed stacks to var/bench/profiles/<name>.txt (open them with speedscope or
flamegraph.pl) and a summary to bench/results/profiles/<name>.summary.txt: samples by the library of the
leaf frame, inclusive shares, and which of our calls the time was spent for. py-spy samples only the
thread holding the GIL (`--gil`), i.e. the Python CPU time of these GIL-bound processes
(BENCH_PROFILE_ALL_THREADS=1: every thread, waits included). It runs apart from `make bench`, since
sampling at 250 Hz costs the profiled processes a few percent.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench import common, drain, harness, intake
from bench.common import LOGS, PYTHON, RESULTS, bench_connect, log

#: Raw collapsed stacks (large; git-ignored) and their summaries (small; kept with the results).
PROFILES = LOGS / "profiles"
SUMMARIES = RESULTS / "profiles"
PY_SPY = str(Path(PYTHON).parent / "py-spy")

#: Top-level directory of a frame's file → the label its time is counted under (others: their own name).
LIBRARIES = {
    "sqlalchemy": "sqlalchemy", "psycopg": "psycopg", "psycopg_binary": "psycopg", "psycopg_pool": "psycopg",
    "redis": "redis-py", "dramatiq": "dramatiq", "celery": "celery", "kombu": "celery", "billiard": "celery",
    "falcon": "falcon", "gunicorn": "gunicorn", "prometheus_client": "prometheus_client", "httpx": "httpx",
    "httpcore": "httpx", "h11": "httpx", "anyio": "httpx", "ledger": "ours: ledger", "actors": "ours: actors",
    "service": "ours: service", "bench": "bench",
}  # fmt: skip

_FRAME = re.compile(r"^(?P<func>\S+) \((?P<path>[^:()]+)(?::(?P<line>\d+))?\)$")


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def library(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return "other"
    path = match.group("path")
    top = path.split("/", 1)[0] if "/" in path else ""
    if top in LIBRARIES:
        return LIBRARIES[top]
    return f"stdlib {top or Path(path).stem}"


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    return f"{match.group('func')} ({match.group('path')})" if match else frame


def summary(path: Path, top: int = 30) -> str:
    stacks = parse(path)
    total = sum(n for _, n in stacks) or 1
    by_lib: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    ours_first: Counter[str] = Counter()
    for frames, n in stacks:
        code = [f for f in frames if _FRAME.match(f)]  # drops py-spy's "process …" / "thread …" pseudo-frames
        if not code:
            continue
        by_lib[library(code[-1])] += n
        by_leaf[code[-1]] += n
        for name in {_short(f) for f in code}:
            inclusive[name] += n
        # The innermost frame of our own code: which of our calls the time below it serves.
        for f in reversed(code):
            if library(f).startswith("ours"):
                ours_first[_short(f)] += n
                break
        else:
            ours_first["(no frame of ours on the stack)"] += n
    lines = [f"{path.name}: {total} samples", "", "by the library of the leaf frame (self time):"]
    lines += [f"  {n / total:6.1%}  {lib}" for lib, n in by_lib.most_common()]
    lines += ["", "inclusive (time in the function and below), frames under 97 %:"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in inclusive.most_common() if n / total < 0.97][:45]
    lines += ["", "innermost frame of our code on the stack (what the time below it was spent for):"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in ours_first.most_common(top)]
    lines += ["", "hottest leaf frames:"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in by_leaf.most_common(top)]
    return "\n".join(lines)


def spy(pids: list[int], name: str, *, subprocesses: bool = False, rate: int = 250) -> list[subprocess.Popen]:
    """Sample only the thread holding the GIL (`--gil`): the Python CPU time of these GIL-bound processes."""
    PROFILES.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, pid in enumerate(pids):
        argv = [PY_SPY, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--nonblocking",
                "--output", str(PROFILES / f"{name}.{i}.txt")]  # fmt: skip
        if os.environ.get("BENCH_PROFILE_ALL_THREADS", "") in ("", "0"):
            argv.append("--gil")
        if subprocesses:
            argv.append("--subprocesses")
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)
    return procs


def stop_spies(procs: list[subprocess.Popen], name: str) -> Path:
    for p in procs:
        p.send_signal(signal.SIGINT)
    for p in procs:
        p.wait(timeout=60)
    merged = PROFILES / f"{name}.txt"
    counts: Counter[str] = Counter()
    for part in sorted(PROFILES.glob(f"{name}.*.txt")):
        for frames, n in parse(part):
            counts[";".join(frames)] += n
        part.unlink()
    merged.write_text("".join(f"{stack} {n}\n" for stack, n in counts.items()))
    return merged


def profile_intake(seconds: int) -> Path:
    harness.setup_database()
    harness.reset_ledger()
    api, port = harness.api_server("profile-api")
    try:
        intake.wrk(port, 2, "warm")
        spies = spy(api.children(), "intake")
        figures, _ = intake.wrk(port, seconds, "prof")
        path = stop_spies(spies, "intake")
        log(f"intake under py-spy: {figures['rps']:.0f} req/s")
    finally:
        api.stop()
        common.drop_database()
    return path


def profile_drain(jobs: int, channel: str, *, callbacks: bool = False) -> Path:
    harness.setup_database()
    harness.reset_ledger()
    sink = None
    env: dict[str, str] = {}
    recipient = "bench-user"
    if channel == "webhook":
        port = common.free_port()
        sink = common.start("profile-sink", [PYTHON, "-m", "bench.sink", str(port), "2"])
        common.wait_http(port, "/")
        recipient, env = f"http://127.0.0.1:{port}/hook", {"WJP_WEBHOOK_ALLOW_PRIVATE": "true"}
    callback_url = None
    if callbacks:
        # `log` jobs with a status callback each, to a local receiver (the callback_cost phase's drain).
        port = common.free_port()
        sink = common.start("profile-sink", [PYTHON, "-m", "bench.sink", str(port), "2"])
        common.wait_http(port, "/")
        callback_url, env = f"http://127.0.0.1:{port}/status", {"WJP_WEBHOOK_ALLOW_PRIVATE": "true"}
    drain.enqueue(jobs, channel, recipient, "prof", callback_url=callback_url)
    service = harness.worker("profile-worker", **env)
    name = f"drain-{channel}" + ("-callbacks" if callbacks else "")
    try:
        with bench_connect() as conn:
            while not harness.worker_processes(service):
                time.sleep(0.05)
            time.sleep(1.5)  # imports done; the processes are consuming
            spies = spy(harness.worker_processes(service), name)
            t0, d0 = time.perf_counter(), sum(drain.finished_count(conn))
            while sum(drain.finished_count(conn)) < jobs or (callbacks and drain.callbacks_undelivered(conn)):
                time.sleep(0.05)
            rate = (jobs - d0) / (time.perf_counter() - t0)
            path = stop_spies(spies, name)
        log(f"drain under py-spy: {rate:.0f} jobs/s")
    finally:
        service.stop()
        if sink:
            sink.stop()
        common.drop_database()
    return path


def profile_e2e(rate: float, seconds: float) -> list[Path]:
    harness.setup_database()
    harness.reset_ledger()
    api, port = harness.api_server("profile-e2e-api")
    work = harness.worker("profile-e2e-worker")
    argv = [PYTHON, "-m", "bench.openloop", str(port), str(rate), str(seconds + 4), "prof", "2"]
    try:
        while not harness.worker_processes(work):
            time.sleep(0.05)
        time.sleep(2)  # the worker's processes are up and polling
        load = subprocess.Popen(argv, cwd=common.ROOT, env=common.bench_env(), stdout=subprocess.PIPE, text=True)
        time.sleep(3)  # past the generator's warm-up
        spies = spy(api.children(), "e2e-api") + spy(harness.worker_processes(work), "e2e-worker")
        time.sleep(seconds)
        paths = [stop_spies(spies[: len(api.children())], "e2e-api"), stop_spies(spies[-2:], "e2e-worker")]
        out = load.communicate()[0]
        log(f"e2e under py-spy: {out.strip().splitlines()[-1] if out.strip() else 'no answer from the generator'}")
    finally:
        api.stop()
        work.stop()
        common.drop_database()
    return paths


def main() -> None:
    what = sys.argv[1]
    if what == "summary":
        print(summary(Path(sys.argv[2])))
        return
    if what == "intake":
        paths = [profile_intake(int(sys.argv[2]) if len(sys.argv) > 2 else 15)]
    elif what == "drain":
        jobs = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
        paths = [profile_drain(jobs, sys.argv[3] if len(sys.argv) > 3 else "log")]
    elif what == "callbacks":
        paths = [profile_drain(int(sys.argv[2]) if len(sys.argv) > 2 else 5000, "log", callbacks=True)]
    elif what == "e2e" and len(sys.argv) > 2:
        paths = profile_e2e(float(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 8)
    else:
        raise SystemExit(__doc__)
    for path in paths:
        text = summary(path)
        SUMMARIES.mkdir(parents=True, exist_ok=True)
        (SUMMARIES / f"{path.stem}.summary.txt").write_text(text + "\n")
        print(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
