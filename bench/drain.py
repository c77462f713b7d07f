"""The delivery phases of `make bench`: our worker's drain of a queued backlog (`log` channel, webhooks) beside bare
Dramatiq's and Celery's, each from the worker's start; see bench/README.md, "Delivery"."""

from __future__ import annotations

import multiprocessing
import os
import re
import time

from bench import common
from bench.common import (
    DATABASE_URL,
    PYTHON,
    QUICK,
    REDIS_URL,
    CpuMeter,
    bench_connect,
    bench_env,
    log,
    median,
    running,
    start,
)
from bench.harness import QUEUE, WORKER_PROCESSES, WORKER_THREADS, r, reset_ledger, worker, worker_processes

DRAIN_JOBS = int(os.environ.get("BENCH_DRAIN_JOBS", "5000" if QUICK else "20000"))
DRAIN_REPS = int(os.environ.get("BENCH_DRAIN_REPS", "1" if QUICK else "3"))


def _enqueue_worker(args: tuple[int, int, str, str, str, str | None]) -> int:
    """One producer process: the real intake path, ledger.intake.accept + Dispatcher.send, per job."""
    first, count, channel, recipient, tag, callback_url = args
    from actors.broker import Dispatcher, make_broker
    from ledger import intake
    from ledger.database import Database
    from ledger.timestamps import utcnow
    from ledger.transitions import Dispatch

    database = Database(DATABASE_URL, pool_size=1, transactions=1, kept=0)
    dispatcher = Dispatcher(make_broker(REDIS_URL), QUEUE)
    callback = {}
    if callback_url:
        port = callback_url.split(":")[2].split("/")[0]
        callback = {"callback_url": callback_url, "callback_destination": f"webhook:127.0.0.1:{port}"}
    message = "Hello, this is a notification body of roughly one hundred and sixty characters used for the drain " \
              "benchmark; it is padded to be realistic....."  # fmt: skip
    for i in range(first, first + count):
        request = intake.NewNotification(
            idempotency_key=f"{tag}-{i}", recipient=recipient, channel=channel, message=message, max_attempts=5,
            **callback,
        )  # fmt: skip
        now = utcnow()
        result = database.run(lambda conn, request=request, now=now: intake.accept(conn, request, now=now,
                                                                                    dispatch_now=True))  # fmt: skip
        dispatcher.send([Dispatch(result.job_id, result.dispatch_seq, result.next_attempt_at)], now=now)
    database.dispose()
    return count


def enqueue(
    n: int, channel: str, recipient: str, tag: str, processes: int = 2, callback_url: str | None = None
) -> float:
    started = time.perf_counter()
    share = n // processes
    parts = [(i * share, share if i < processes - 1 else n - share * (processes - 1), channel, recipient, tag,
              callback_url) for i in range(processes)]  # fmt: skip
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        done = sum(pool.map(_enqueue_worker, parts))
    assert done == n, done
    return n / (time.perf_counter() - started)


def index_reads(conn) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Index entries read so far, per index of `jobs` (a claim whose plan scans a whole partial index shows here)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute("SELECT indexrelname, idx_tup_read FROM pg_stat_user_indexes WHERE relname = 'jobs'")
    return {name: int(n) for name, n in rows}


def finished_count(conn) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    row = conn.execute("SELECT coalesce(sum(success), 0), coalesce(sum(failed), 0) FROM job_counts").fetchone()
    return int(row[0]), int(row[1])


def callbacks_undelivered(conn) -> int:  # type: ignore[no-untyped-def]
    """Status callbacks still waiting or in flight, read from their partial indexes."""
    row = conn.execute("SELECT (SELECT count(*) FROM callbacks WHERE status IN ('PENDING', 'RETRY')) + "
                       "(SELECT count(*) FROM callbacks WHERE status = 'PROCESSING')").fetchone()  # fmt: skip
    return int(row[0])


def drain(name: str, n: int, channel: str, recipient: str, extra_groups: dict | None = None,
          timeout: float = 300.0, callback_url: str | None = None, **env: str) -> dict:  # fmt: skip
    """`callback_url`: every job has this status callback, and the drain ends when the last one is delivered."""
    reset_ledger()
    enqueue_rate = enqueue(n, channel, recipient, name, callback_url=callback_url)
    log(f"  {name}: {n} jobs enqueued through the intake path at {enqueue_rate:.0f}/s; starting wjp worker "
        f"--processes {WORKER_PROCESSES} --threads {WORKER_THREADS}")  # fmt: skip
    with bench_connect() as conn:
        time.sleep(0.6)
        db0 = common.db_counters(conn)
        rc0 = common.redis_commandstats(r)
        ix0 = index_reads(conn)
        t_spawn = time.perf_counter()
        service = worker(f"worker-{name}", **env)
        with running(service):
            t_first = meter = t_jobs_done = None
            done_first = 0
            timeline = []
            next_mark = t_spawn
            while True:
                success, failed = finished_count(conn)
                done = success + failed
                now = time.perf_counter()
                if t_first is None and done > 0:
                    t_first, done_first = now, done
                    startup_cpu = common.tree_cpu_seconds(service.pid)
                    groups = {"worker": service.tree(), **(extra_groups or {})}
                    meter = CpuMeter(groups, common.backends_of_bench()).__enter__()
                if now >= next_mark:
                    timeline.append((round(now - t_spawn, 2), done))
                    next_mark += 1.0
                if done >= n and callback_url and t_jobs_done is None:
                    t_jobs_done = now
                if (done >= n and (not callback_url or callbacks_undelivered(conn) == 0)) or now - t_spawn > timeout:
                    break
                time.sleep(0.02)
            t_end = time.perf_counter()
            if meter is not None:
                meter.__exit__(None, None, None)
            rss = {f"pid{p}": round(common.rss_mb(p), 1) for p in worker_processes(service)}
            rss_main = round(common.rss_mb(service.pid), 1)
            time.sleep(0.6)
            db1 = common.db_counters(conn)
            rc1 = common.redis_commandstats(r)
            ix1 = index_reads(conn)
        status = dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    steady = (done - done_first) / (t_end - t_first) if t_first and t_end > t_first else 0.0
    dbd, rcd = common.diff(db1, db0), common.diff(rc1, rc0)
    cores = meter.cores() if meter else {}
    cpu_per_job = round(cores["worker"] * meter.wall / max(done - done_first, 1) * 1e6) if meter else None
    out = {
        "jobs": n,
        "completed": done,
        "failed": failed,
        "statuses": status,
        "jobs_per_s": round(steady, 1),
        "jobs_per_s_incl_startup": round(done / (t_end - t_spawn), 1),
        "startup_s": round((t_first or t_end) - t_spawn, 2),
        "startup_cpu_s": round(startup_cpu, 2) if t_first else None,
        "drain_s": round(t_end - t_spawn, 2),
        "enqueue_per_s": round(enqueue_rate, 1),
        "cores": cores,
        "worker_cpu_us_per_job": cpu_per_job,
        "per_job": {
            "pg_commits": round(dbd.get("xact_commit", 0) / n, 3),
            "pg_rows_updated": round(dbd.get("tup_updated", 0) / n, 3),
            "pg_rows_inserted": round(dbd.get("tup_inserted", 0) / n, 3),
            "redis_calls": {k: round(v / n, 3) for k, v in rcd.items() if v / n >= 0.01},
            "index_entries_read": {k: round((ix1[k] - ix0.get(k, 0)) / n, 1) for k in ix1 if ix1[k] > ix0.get(k, 0)},
        },
        "rss_mb": rss,
        "rss_mb_main": rss_main,
        "timeline": timeline,
    }
    if callback_url and t_first and t_jobs_done:
        out["jobs_done_per_s"] = round((n - done_first) / (t_jobs_done - t_first), 1)
    log(f"  {name}: {out['jobs_per_s']:.0f} jobs/s steady ({out['jobs_per_s_incl_startup']:.0f} from the start; "
        f"first job after {out['startup_s']} s, {out['startup_cpu_s']} s of CPU), {done}/{n} done, statuses {status}, "
        f"cores {cores}")  # fmt: skip
    return out


def webhook_drain(name: str = "drain_webhook", **env: str) -> dict:
    port = common.free_port()
    sink = start("webhook-sink", [PYTHON, "-m", "bench.sink", str(port), "2"])
    with running(sink):
        common.wait_http(port, "/")
        out = drain(
            name, DRAIN_JOBS, "webhook", f"http://127.0.0.1:{port}/hook",
            extra_groups={"sink": sink.tree()}, WJP_WEBHOOK_ALLOW_PRIVATE="true", **env,
        )  # fmt: skip
    served = re.findall(r"served=(\d+)", sink.log_path.read_text())
    out["sink_served"] = sum(map(int, served[-2:])) if served else None
    return out


def _median_run(runs: list[dict]) -> dict:
    """The run with the median rate, carrying the median rate, start-up and rate from the start, and every run's."""
    chosen = sorted(runs, key=lambda x: x["jobs_per_s"])[len(runs) // 2]
    out = dict(chosen)
    for key in ("jobs_per_s", "jobs_per_s_incl_startup", "startup_s", "startup_cpu_s"):
        values = [x[key] for x in runs if x.get(key) is not None]
        out[key] = round(median(values), 2) if values else None
        out[f"runs_{key}"] = values
    return out


def phase_delivery(do_drain: bool, do_peers: bool) -> tuple[dict, dict]:
    """Our drain and the two peers, interleaved over DRAIN_REPS repetitions (so that each ratio compares runs
    made back to back), then the webhook drain once."""
    log(f"delivery: {DRAIN_REPS} × (drain of {DRAIN_JOBS} jobs with the log channel, bare Dramatiq no-op, Celery "
        f"no-op), then one drain with webhooks to a local sink")  # fmt: skip
    ours: list[dict] = []
    peers: dict[str, list[dict]] = {"dramatiq": [], "celery": []}
    for _ in range(DRAIN_REPS):
        if do_drain:
            ours.append(drain("drain", DRAIN_JOBS, "log", "bench-user"))
        if do_peers:
            for name in peers:
                peers[name].append(peer(name, DRAIN_JOBS))
    drains: dict = {}
    if ours:
        drains["log"] = _median_run(ours)
        if do_peers:
            for name, runs in peers.items():
                per_rep = [a["jobs_per_s"] / b["jobs_per_s"] for a, b in zip(ours, runs, strict=True)]
                drains["log"][f"ratio_vs_{name}"] = round(median(per_rep), 3)
                drains["log"][f"ratios_per_rep_vs_{name}"] = [round(x, 3) for x in per_rep]
                # From each worker's start (its process spawned with the jobs already queued) to the last job.
                per_rep = [a["jobs_per_s_incl_startup"] / b["jobs_per_s_incl_startup"]
                           for a, b in zip(ours, runs, strict=True)]  # fmt: skip
                drains["log"][f"from_start_ratio_vs_{name}"] = round(median(per_rep), 3)
                drains["log"][f"from_start_ratios_per_rep_vs_{name}"] = [round(x, 3) for x in per_rep]
        drains["webhook"] = webhook_drain()
    return drains, {name: _median_run(runs) for name, runs in peers.items() if runs}


# ---------------------------------------------------------------------------------------------------- peers


def peer(name: str, n: int) -> dict:
    r.flushdb()
    env = bench_env()
    if name == "dramatiq":
        from bench import peer_dramatiq as tasks

        send = tasks.noop.send
        queued = f"dramatiq:{tasks.QUEUE}.msgs"

        def remaining() -> int:
            return r.hlen(queued)  # an entry leaves the hash when its message is acked, after the actor ran

        argv = [PYTHON, "-m", "dramatiq", "bench.peer_dramatiq", "--processes", str(WORKER_PROCESSES),
                "--threads", str(WORKER_THREADS), "--queues", tasks.QUEUE]  # fmt: skip
    else:
        from bench import peer_celery as tasks

        send = tasks.noop.delay

        def remaining() -> int:
            return r.llen(tasks.QUEUE) + r.hlen("unacked")  # queued + reserved but not yet acked

        argv = [PYTHON, "-m", "celery", "-A", "bench.peer_celery", "worker", "--loglevel", "WARNING",
                "--pool", "prefork", "--concurrency", str(WORKER_PROCESSES), "-Q", tasks.QUEUE,
                "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
    t0 = time.perf_counter()
    for i in range(n):
        send(i)
    enqueue_rate = n / (time.perf_counter() - t0)
    assert remaining() >= n * 0.99, remaining()
    t_spawn = time.perf_counter()
    service = start(f"peer-{name}", argv, env=env)
    with running(service):
        t_first = meter = None
        left_first = n
        while True:
            left = remaining()
            now = time.perf_counter()
            if t_first is None and left < n:
                t_first, left_first = now, left
                startup_cpu = common.tree_cpu_seconds(service.pid)
                meter = CpuMeter({"worker": service.tree()}).__enter__()
            if left == 0 or now - t_spawn > 300:
                break
            time.sleep(0.01)
        t_end = time.perf_counter()
        if meter is not None:
            meter.__exit__(None, None, None)
        rss = {f"pid{p}": round(common.rss_mb(p), 1) for p in service.children()}
    steady = (left_first - left) / (t_end - t_first) if t_first and t_end > t_first else 0.0
    cores = meter.cores() if meter else {}
    cpu_per_job = round(cores["worker"] * meter.wall / max(left_first - left, 1) * 1e6) if meter else None
    out = {
        "jobs": n,
        "completed": n - left,
        "jobs_per_s": round(steady, 1),
        "jobs_per_s_incl_startup": round((n - left) / (t_end - t_spawn), 1),
        "startup_s": round((t_first or t_end) - t_spawn, 2),
        "startup_cpu_s": round(startup_cpu, 2) if t_first else None,
        "enqueue_per_s": round(enqueue_rate, 1),
        "cores": cores,
        "worker_cpu_us_per_job": cpu_per_job,
        "rss_mb": rss,
        "command": " ".join(argv[1:]),
    }
    log(f"  peer {name}: {out['jobs_per_s']:.0f} jobs/s steady ({out['jobs_per_s_incl_startup']:.0f} from the start; "
        f"first job after {out['startup_s']} s, {out['startup_cpu_s']} s of CPU), cores {out['cores']}")  # fmt: skip
    r.flushdb()
    return out
