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
import http.client
import json
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import batch, callbacks, common, flow, listing, ratelimit, sustainable
from bench import intake as intake_module
from bench.common import (
    DATABASE_URL,
    PYTHON,
    QUICK,
    REDIS_URL,
    RESULTS,
    ROOT,
    CpuMeter,
    Service,
    bench_connect,
    bench_env,
    log,
    median,
    pct,
    running,
    start,
    target,
)
from bench.intake import API_WORKERS, INTAKE_SECONDS, SERVER_START_TIMEOUT, wrk

os.environ["DATABASE_URL"] = DATABASE_URL
os.environ["REDIS_URL"] = REDIS_URL

import redis

WJP = str(Path(PYTHON).parent / "wjp")
DRAIN_JOBS = int(os.environ.get("BENCH_DRAIN_JOBS", "5000" if QUICK else "20000"))
DRAIN_REPS = int(os.environ.get("BENCH_DRAIN_REPS", "1" if QUICK else "3"))
WORKER_PROCESSES, WORKER_THREADS = 2, 8
E2E_SECONDS = float(os.environ.get("BENCH_E2E_SECONDS", "6" if QUICK else "15"))
SCALES = [int(s) for s in os.environ.get("BENCH_SCALES", "1000000" if QUICK else "1000000,5000000").split(",")]
STATS_SAMPLES = 50 if QUICK else 200
RECONCILE_SAMPLES = 10 if QUICK else 30
CANDIDATE_PASSES = 3 if QUICK else 7
ALL_PHASES = "intake,batch,ratelimit,drain,peers,e2e,sustainable,flow_cost,noisy,callback_cost,maintenance"
PHASES = [p for p in os.environ.get("BENCH_ONLY", ALL_PHASES).split(",") if p]
QUEUE = "notifications"

r = redis.Redis.from_url(REDIS_URL)


# --------------------------------------------------------------------------------------------------- set-up


def setup_database() -> None:
    common.recreate_database()
    subprocess.run([WJP, "migrate"], env=bench_env(), cwd=ROOT, check=True, capture_output=True)
    with bench_connect() as conn:
        conn.execute(
            """CREATE TABLE baseline_jobs (
                 id uuid PRIMARY KEY, idempotency_key varchar(255) NOT NULL UNIQUE, recipient text NOT NULL,
                 channel varchar(32) NOT NULL, message text NOT NULL, status varchar(16) NOT NULL,
                 created_at timestamptz NOT NULL)"""
        )


def reset_ledger(*, checkpoint: bool = True) -> None:
    with bench_connect() as conn:
        conn.execute("TRUNCATE jobs, attempts, callbacks, baseline_jobs")
        conn.execute("UPDATE job_counts SET success = 0, failed = 0, cancelled = 0, success_attempts = 0")
        if checkpoint:
            conn.execute("CHECKPOINT")
    r.flushdb()


def api_server(name: str, *, workers: int = API_WORKERS, **env: str) -> tuple[Service, int]:
    port = common.free_port()
    service = start(
        name,
        [WJP, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        env=bench_env(**env),
    )
    try:
        common.wait_http(port, "/healthz", timeout=SERVER_START_TIMEOUT)
    except RuntimeError:
        service.stop()  # not left running when it did not come up in time
        raise
    return service, port


def worker(name: str, **env: str) -> Service:
    return start(
        name,
        [WJP, "worker", "--processes", str(WORKER_PROCESSES), "--threads", str(WORKER_THREADS)],
        env=bench_env(**env),
    )


def worker_processes(service: Service) -> list[int]:
    """The Dramatiq worker processes (those that run the actor), not the supervising main process: its children."""
    table = common.process_table()
    return [p for p in common.descendants(service.pid, include_self=False, table=table) if table[p][0] == service.pid]


# ---------------------------------------------------------------------------------------------------- drain


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


# ------------------------------------------------------------------------------------------------------ e2e


def phase_e2e(max_rps: float, server: Callable[[str], tuple[Service, int]] = api_server) -> dict:
    rate = round(max_rps / 2, 1)
    log(f"e2e: POST at {rate:.0f}/s (half of {max_rps:.0f}) for {E2E_SECONDS:g}s, open loop, with wjp worker running")
    reset_ledger()
    api, port = server("e2e-api")
    work = worker("worker-e2e")
    with running(api, work):
        time.sleep(3)  # the worker's processes are up and polling
        sent_file = common.LOGS / "e2e-sent.json"
        gen_argv = [PYTHON, "-m", "bench.openloop", str(port), str(rate), str(E2E_SECONDS), "e2e", "2", str(sent_file)]
        meter = CpuMeter({"gunicorn": api.tree(), "worker": work.tree()}, common.backends_of_bench())
        with meter:
            gen = subprocess.Popen(gen_argv, cwd=ROOT, env=bench_env(), stdout=subprocess.PIPE, text=True)
            out_text = gen.stdout.read() if gen.stdout else ""
            _, _, usage = os.wait4(gen.pid, 0)
            gen.returncode = 0
        client = json.loads(out_text.strip().splitlines()[-1])
        cores = meter.cores()
        cores["load_generator"] = round((usage.ru_utime + usage.ru_stime) / meter.wall, 3)
        accepted = int(client["statuses"].get("202", 0))
        deadline = time.monotonic() + 60
        with bench_connect() as conn:
            while time.monotonic() < deadline:
                left = conn.execute(
                    "SELECT count(*) FROM jobs WHERE status NOT IN ('SUCCESS', 'FAILED', 'CANCELLED')"
                ).fetchone()[0]
                if left == 0:
                    break
                time.sleep(0.1)
            # created_at: the API's clock before the INSERT; started_at: the claim; finished_at: the outcome.
            rows = conn.execute(
                "SELECT extract(epoch FROM j.completed_at - j.created_at) * 1000, "
                "       extract(epoch FROM a.started_at - j.created_at) * 1000, "
                "       extract(epoch FROM a.finished_at - a.started_at) * 1000, "
                "       j.idempotency_key, extract(epoch FROM j.completed_at) "
                "FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.number = j.attempts "
                "WHERE j.idempotency_key LIKE 'e2e-%' AND j.status = 'SUCCESS'"
            ).fetchall()
            unfinished = conn.execute(
                "SELECT count(*) FROM jobs WHERE idempotency_key LIKE 'e2e-%' AND status <> 'SUCCESS'"
            ).fetchone()[0]
        api_rss = {f"pid{p}": round(common.rss_mb(p), 1) for p in api.children()}
        worker_rss = {f"pid{p}": round(common.rss_mb(p), 1) for p in worker_processes(work)}
    latencies = [float(x[0]) for x in rows]
    to_claim, claim_to_done = [float(x[1]) for x in rows], [float(x[2]) for x in rows]
    sent = json.loads(sent_file.read_text())
    # What a producer sees: from starting its POST to the job's SUCCESS (the listen backlog included).
    seen = [(float(x[4]) - sent[x[3]]) * 1000 for x in rows if x[3] in sent]
    out = {
        "rate": rate,
        "seconds": E2E_SECONDS,
        "measured_jobs": len(latencies),
        "accepted_202": accepted,
        "unfinished": unfinished,
        "p50_ms": round(pct(latencies, 50), 2),
        "p90_ms": round(pct(latencies, 90), 2),
        "p99_ms": round(pct(latencies, 99), 2),
        "max_ms": round(max(latencies), 2) if latencies else None,
        "producer_view_ms": {"p50": round(pct(seen, 50), 2), "p99": round(pct(seen, 99), 2), "jobs": len(seen)},
        "split_ms": {
            "created_to_claimed_p50": round(pct(to_claim, 50), 2),
            "created_to_claimed_p99": round(pct(to_claim, 99), 2),
            "claimed_to_completed_p50": round(pct(claim_to_done, 50), 2),
            "claimed_to_completed_p99": round(pct(claim_to_done, 99), 2),
        },
        "client": client,
        # Requests waited in the API's listen backlog: the rate was not moderate for the machine as loaded then
        # (created_at is taken when a request is handled, so the ledger-based figures above exclude that wait).
        "api_saturated": bool(client["http_p50_ms"] > 100),
        "cores": cores,
        "rss_mb": {"api": api_rss, "worker": worker_rss},
    }
    log(f"  e2e: p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms over {len(latencies)} jobs (from the POST's start: "
        f"p50 {out['producer_view_ms']['p50']} ms, p99 {out['producer_view_ms']['p99']} ms); HTTP p50 "
        f"{client['http_p50_ms']} ms p99 {client['http_p99_ms']} ms; achieved {client['achieved_rate']}/s; "
        f"cores {cores}")  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------- maintenance


def time_stats_http(port: int, k: int) -> list[float]:
    samples = []
    for _ in range(k + 5):
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/internal/queue/stats")
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 200, response.status
        samples.append((time.perf_counter() - started) * 1000)
    return samples[5:]


def time_inprocess(k: int) -> dict:
    """The stats query and reconciler passes in this process (warm connection): what the ledger costs."""
    from actors.settings import Settings
    from ledger import queries
    from ledger.database import Database
    from ledger.timestamps import utcnow
    from service.cli import make_reconciler

    database = Database(DATABASE_URL, pool_size=1, transactions=1, kept=0)
    stats_ms = []
    for _ in range(k + 3):
        started = time.perf_counter()
        database.run(lambda conn: queries.queue_stats(conn, now=utcnow()))
        stats_ms.append((time.perf_counter() - started) * 1000)
    reconciler = make_reconciler(Settings.from_env())
    passes = []
    for _ in range(k + 2):
        started = time.perf_counter()
        report = reconciler.run_once()
        passes.append(((time.perf_counter() - started) * 1000, report))
    database.dispose()
    reconciler.database.dispose()
    return {"stats_ms": stats_ms[3:], "passes": passes[2:]}


def candidate_passes(k: int) -> list[tuple[float, object]]:
    from actors.settings import Settings
    from service.cli import make_reconciler

    reconciler = make_reconciler(Settings.from_env())
    reconciler.run_once()  # warm the connections; this pass re-dispatches the candidates
    out = []
    for _ in range(k):
        r.flushdb()  # the candidates' messages are lost again
        started = time.perf_counter()
        report = reconciler.run_once()
        out.append(((time.perf_counter() - started) * 1000, report))
    reconciler.database.dispose()
    return out  # the last pass's messages are in Redis: the next pass finds all 1,000 present


def cli_pass() -> dict:
    done = subprocess.run([WJP, "reconcile"], env=bench_env(), cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def explain_plans() -> dict[str, list[str]]:
    """EXPLAIN ANALYZE of the statements behind the stats and a reconciler pass, as the product sends them."""
    from sqlalchemy import event

    from actors.settings import Settings
    from ledger import queries
    from ledger.database import Database
    from ledger.timestamps import utcnow
    from service.cli import make_reconciler

    captured: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        captured.append((statement, parameters))

    database = Database(DATABASE_URL, pool_size=1, transactions=1, kept=0)
    reconciler = make_reconciler(Settings.from_env())
    event.listen(database.engine, "before_cursor_execute", capture)
    database.run(lambda conn: queries.queue_stats(conn, now=utcnow()))
    event.listen(reconciler.database.engine, "before_cursor_execute", capture)
    reconciler.run_once()
    event.remove(database.engine, "before_cursor_execute", capture)
    event.remove(reconciler.database.engine, "before_cursor_execute", capture)
    plans = {}
    with database.engine.connect() as conn:
        for i, (statement, parameters) in enumerate(captured):
            if not statement.lstrip().upper().startswith("SELECT"):
                continue
            rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).fetchall()
            plans[f"{i}: {' '.join(statement.split())[:90]}"] = [row[0] for row in rows]
        conn.rollback()
    database.dispose()
    reconciler.database.dispose()
    return plans


def phase_maintenance() -> dict:
    from bench import seed

    reset_ledger(checkpoint=False)
    out: dict = {}
    for scale in SCALES:
        label = f"{scale // 1_000_000}m"
        log(f"maintenance: growing the ledger to {scale:,} rows (generate_series, triggers off, counters recomputed)")
        with bench_connect() as conn:
            seeded = seed.grow_to(conn, scale)
        log(f"  seeded: {seeded}")
        api, port = api_server(f"stats-api-{label}", workers=2)
        with running(api):
            http_ms = time_stats_http(port, STATS_SAMPLES)
            inproc = time_inprocess(RECONCILE_SAMPLES)
            empty_cli = cli_pass()
            plans = explain_plans()
            log(f"  {label}: listing, deep pages of filtered walks")
            listed = listing.measure(api, port, scale)
            with bench_connect() as conn:
                seed.add_candidates(conn, 1000)
            cand = candidate_passes(CANDIDATE_PASSES)
            cand_cli_rows = cli_pass()  # messages now present: a pass that checks 1,000 and sends none
            with bench_connect() as conn:
                stats_rows = conn.execute("SELECT sum(success), sum(failed), sum(cancelled) FROM job_counts").fetchone()
                seed.remove_candidates(conn)
                r.flushdb()
        empty_ms = [ms for ms, _ in inproc["passes"]]
        cand_ms = [ms for ms, _ in cand]
        out[label] = {
            "seed": seeded,
            "stats_http_ms_p50": round(pct(http_ms, 50), 3),
            "stats_http_ms_p99": round(pct(http_ms, 99), 3),
            "stats_query_ms_p50": round(pct(inproc["stats_ms"], 50), 3),
            "reconcile_empty_ms_p50": round(pct(empty_ms, 50), 3),
            "reconcile_empty_ms_max": round(max(empty_ms), 3),
            "reconcile_empty_report": json.loads(inproc["passes"][-1][1].to_json()),
            "reconcile_empty_cli": empty_cli,
            "reconcile_1000_ms_p50": round(pct(cand_ms, 50), 3),
            "reconcile_1000_ms_max": round(max(cand_ms), 3),
            "reconcile_1000_report": json.loads(cand[-1][1].to_json()),
            "reconcile_1000_present_cli": cand_cli_rows,
            "counters": [int(x) for x in stats_rows],
            "explain": plans,
            "listing": listed,
        }
        log(f"  {label}: stats HTTP p50 {out[label]['stats_http_ms_p50']} ms (query {out[label]['stats_query_ms_p50']} "
            f"ms), empty pass {out[label]['reconcile_empty_ms_p50']} ms, 1000-candidate pass "
            f"{out[label]['reconcile_1000_ms_p50']} ms ({out[label]['reconcile_1000_report']})")  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ reporting


def machine() -> dict:
    def first_line(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")  # fmt: skip
    mem = next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    with bench_connect() as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
        sync = conn.execute("SHOW synchronous_commit").fetchone()[0]
    import celery
    import dramatiq
    import falcon
    import gunicorn
    import psycopg
    import sqlalchemy

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(int(mem) / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": pg,
        "synchronous_commit": sync,
        "redis": r.info("server")["redis_version"],
        "wrk": first_line(["wrk", "--version"]),
        "packages": {m.__name__: m.__version__ for m in (falcon, gunicorn, sqlalchemy, psycopg, dramatiq, celery)}
        | {"redis-py": redis.__version__},
    }


def summarise(res: dict) -> dict:
    intake, drain_, peers, e2e, maint = (res.get(k, {}) for k in ("intake", "drain", "peers", "e2e", "maintenance"))
    big = "5m" if "5m" in maint else None

    def g(d: dict, *ks: str) -> object:
        return _dig(d, ks)

    out = {
        **{name: {k: g(intake, name, k) for k in ("rps", "p50_ms", "p99_ms")}
           for name in ("intake", *intake_module.BASELINES)},
        **{name: {"jobs_per_s": g(d, key, "jobs_per_s"), "jobs_per_s_from_start": g(d, key, "jobs_per_s_incl_startup"),
                  "startup_s": g(d, key, "startup_s"), "startup_cpu_s": g(d, key, "startup_cpu_s")}
           for name, d, key in (("drain", drain_, "log"), ("drain_webhook", drain_, "webhook"),
                                ("peer_dramatiq", peers, "dramatiq"), ("peer_celery", peers, "celery"))},
        "e2e": {"p50_ms": g(e2e, "p50_ms"), "p99_ms": g(e2e, "p99_ms"), "rate": g(e2e, "rate"),
                "from_post_start_p50_ms": g(e2e, "producer_view_ms", "p50"),
                "from_post_start_p99_ms": g(e2e, "producer_view_ms", "p99"), "api_saturated": g(e2e, "api_saturated")},
        "stats_1m_ms": g(maint, "1m", "stats_http_ms_p50"),
        "reconcile_empty_1m_ms": g(maint, "1m", "reconcile_empty_ms_p50"),
        "reconcile_1000_1m_ms": g(maint, "1m", "reconcile_1000_ms_p50"),
        "stats_5m_ms": g(maint, "5m", "stats_http_ms_p50"),
        "reconcile_empty_5m_ms": g(maint, "5m", "reconcile_empty_ms_p50"),
        "reconcile_1000_5m_ms": g(maint, "5m", "reconcile_1000_ms_p50"),
        "listing_1m_p99_ms": listing.worst_p99(maint.get("1m")),
        "listing_5m_p99_ms": listing.worst_p99(maint.get("5m")),
    }  # fmt: skip

    def values(d: dict, *ks: str) -> list[float]:
        return list((_dig(d, ks) or {}).values())

    api_rss = values(e2e, "rss_mb", "api") or values(intake, "intake", "rss_mb_after")
    worker_rss = values(drain_, "log", "rss_mb") + values(drain_, "webhook", "rss_mb")
    out["rss_mb"] = {"api": max(api_rss) if api_rss else None, "worker": max(worker_rss) if worker_rss else None,
                     "worker_main": g(drain_, "log", "rss_mb_main")}  # fmt: skip

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    def drain_ratio(peer: str) -> float | None:
        """The median of per-repetition ratios when the drain was repeated, else the ratio of the rates."""
        per_rep = _dig(drain_, ("log", f"ratio_vs_{peer}"))
        return per_rep if per_rep is not None else ratio(out["drain"]["jobs_per_s"], out[f"peer_{peer}"]["jobs_per_s"])

    scale_note = "5 M rows" if big else "1 M rows (BENCH_QUICK: 5 M skipped)"
    stats_key, empty_key = ("stats_5m_ms", "reconcile_empty_5m_ms") if big else ("stats_1m_ms", "reconcile_empty_1m_ms")
    out["targets"] = {
        **intake_module.targets(intake),
        "drain_vs_dramatiq": target(drain_ratio("dramatiq"), ">=", 0.5),
        "drain_vs_celery": target(drain_ratio("celery"), ">=", 1.5),
        "drain_from_start_vs_dramatiq": target(_dig(drain_, ("log", "from_start_ratio_vs_dramatiq")), ">=", 0.5),
        "worker_first_job_s": target(out["drain"]["startup_s"], "<", 1.0),
        "e2e_p99_ms": target(out["e2e"]["p99_ms"], "<", 50, at_rate=out["e2e"]["rate"]),
        "stats_ms": target(out[stats_key], "<", 10, scale=scale_note),
        "reconcile_empty_ms": target(out[empty_key], "<", 20, scale=scale_note),
        "listing_p99_ms": target(out[f"listing_{'5m' if big else '1m'}_p99_ms"], "<", 20, scale=scale_note),
        "rss_api_mb": target(out["rss_mb"]["api"], "<", 100),
        "rss_worker_mb": target(out["rss_mb"]["worker"], "<", 100),
    }  # fmt: skip
    for extra in (flow.summary(res), ratelimit.summary(res), sustainable.summary(res), callbacks.summary(res)):
        out["targets"].update(extra.pop("targets"))
        out.update(extra)
    out["targets"].update(batch.targets(res))
    rate = {k: out[k]["jobs_per_s"] for k in ("drain_webhook", "peer_dramatiq", "peer_celery")}
    out["info_ratios"] = {
        "drain_webhook_vs_dramatiq": _round(ratio(rate["drain_webhook"], rate["peer_dramatiq"])),
        "drain_webhook_vs_celery": _round(ratio(rate["drain_webhook"], rate["peer_celery"])),
        "dramatiq_vs_celery": _round(ratio(rate["peer_dramatiq"], rate["peer_celery"])),
        # The threaded baselines are reference rows since issue 22: ours is judged against the asyncio ones.
        **{f"intake_vs_{name}": _dig(intake, ("intake", f"ratio_vs_{name}"))
           for name in ("baseline_insert_threaded", "baseline_naive_threaded")},
    }  # fmt: skip
    # CPU per unit of work of the process under test: less sensitive to other users' load than the rates.
    out["cpu_us"] = {
        "gunicorn_per_request": {k: _dig(intake, (k, "median_run", "gunicorn_cpu_us_per_req"))
                                 for k in ("intake", *intake_module.BASELINES)},
        "worker_per_job": {"drain": _dig(drain_, ("log", "worker_cpu_us_per_job")),
                           "drain_webhook": _dig(drain_, ("webhook", "worker_cpu_us_per_job")),
                           "peer_dramatiq": _dig(peers, ("dramatiq", "worker_cpu_us_per_job")),
                           "peer_celery": _dig(peers, ("celery", "worker_cpu_us_per_job"))},
    }  # fmt: skip
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _dig(d: dict, keys: tuple) -> object:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


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
    results["machine"] = machine()
    try:
        if "intake" in PHASES:
            results["intake"] = intake_module.phase_intake(intake_module.Harness(reset_ledger, api_server, r))
        if "batch" in PHASES:
            results["batch"] = batch.phase_batch(batch.Harness(reset_ledger, api_server, wrk))
        if "ratelimit" in PHASES:
            rl_harness = ratelimit.Harness(reset_ledger, api_server, wrk, WJP, INTAKE_SECONDS)
            results["ratelimit"] = ratelimit.phase_ratelimit(rl_harness)
        if "drain" in PHASES or "peers" in PHASES:
            drains, peers = phase_delivery("drain" in PHASES, "peers" in PHASES)
            results.update({"drain": drains} if drains else {}, **({"peers": peers} if peers else {}))
        if "e2e" in PHASES:
            max_rps = _dig(results, ("intake", "intake", "rps")) or float(os.environ.get("BENCH_E2E_MAX_RPS", "1000"))
            results["e2e"] = phase_e2e(max_rps)
        if "sustainable" in PHASES:
            s_harness = sustainable.Harness(reset_ledger, api_server, worker)
            results["sustainable"] = sustainable.phase_sustainable(s_harness)
        harness = flow.Harness(reset_ledger, api_server, worker, drain, webhook_drain, DRAIN_JOBS)
        results.update(flow.run_phases(PHASES, results, harness))
        if "callback_cost" in PHASES:
            results["callback_cost"] = callbacks.phase_callback_cost(harness, start, running)
        if "maintenance" in PHASES:
            results["maintenance"] = phase_maintenance()
    finally:
        if os.environ.get("BENCH_KEEP_DB", "") in ("", "0"):
            common.drop_database()
        r.flushdb()
    results["loadavg_after"] = common.loadavg()
    results["duration_s"] = round(time.time() - started)
    final = {**summarise(results), "meta": {k: results[k] for k in (
        "date", "quick", "loadavg_before", "loadavg_after", "machine_busy_cores_before", "duration_s", "machine")},
        "details": {k: results.get(k) for k in ("intake", "batch", "ratelimit", "drain", "peers", "e2e", "sustainable",
                                                 "noisy", "flow_cost", "callback_cost", "maintenance")}}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    common.write_json(RESULTS / "latest.json", final)
    table = render_table(final)
    (RESULTS / "latest.md").write_text(table + "\n")
    print(table)
    log(f"done in {results['duration_s']} s; wrote {RESULTS / 'latest.json'}")
    return 0


def render_table(res: dict) -> str:
    """The results as the Markdown tables of bench/README.md."""
    meta = res["meta"]
    fmt = lambda v, nd=0: "–" if v is None else f"{v:,.{nd}f}"  # noqa: E731
    t = res["targets"]
    lines = [
        f"Run of {meta['date']} ({'BENCH_QUICK' if meta['quick'] else 'full'}, {meta['duration_s']} s); loadavg "
        f"before {meta['loadavg_before']}, after {meta['loadavg_after']}; other users were busy on "
        f"{meta['machine_busy_cores_before']} of {meta['machine']['cores']} cores just before the start.",
        "",
        "| figure | ours | baseline / peer | ratio | target | pass |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += intake_module.table_rows(res)
    d, dw, pd, pc = (res[k]["jobs_per_s"] for k in ("drain", "drain_webhook", "peer_dramatiq", "peer_celery"))
    lines.append(
        f"| drain jobs/s, `log` channel | {fmt(d)} | bare Dramatiq no-op {fmt(pd)} | "
        f"{fmt(t['drain_vs_dramatiq']['measured'], 2)} | ≥ 0.5 | {t['drain_vs_dramatiq']['pass']} |"
    )
    lines.append(
        f"| | | Celery 5 no-op {fmt(pc)} | {fmt(t['drain_vs_celery']['measured'], 2)} | ≥ 1.5 | "
        f"{t['drain_vs_celery']['pass']} |"
    )
    ds, ps, tf = res["drain"], res["peer_dramatiq"], t["drain_from_start_vs_dramatiq"]
    lines.append(
        f"| drain jobs/s from the worker's start, `log` channel | {fmt(ds['jobs_per_s_from_start'])} | bare Dramatiq "
        f"no-op {fmt(ps['jobs_per_s_from_start'])} | {fmt(tf['measured'], 2)} | ≥ 0.5 | {tf['pass']} |"
    )
    lines.append(
        f"| first job after the worker's start, s (CPU s until then) | {fmt(ds['startup_s'], 2)} "
        f"({fmt(ds['startup_cpu_s'], 2)}) | bare Dramatiq {fmt(ps['startup_s'], 2)} ({fmt(ps['startup_cpu_s'], 2)}) "
        f"| | < 1 | {t['worker_first_job_s']['pass']} |"
    )
    lines.append(
        f"| drain jobs/s, webhooks to a local sink | {fmt(dw)} | bare Dramatiq / Celery | "
        f"{fmt(res['info_ratios']['drain_webhook_vs_dramatiq'], 2)} / "
        f"{fmt(res['info_ratios']['drain_webhook_vs_celery'], 2)} | – | – |"
    )
    e = res["e2e"]
    lines.append(
        f"| end-to-end POST → SUCCESS at {fmt(e['rate'])} req/s, p50 / p99 ms | {fmt(e['p50_ms'], 1)} / "
        f"{fmt(e['p99_ms'], 1)} | | | p99 < 50 | {t['e2e_p99_ms']['pass']} |"
    )
    for scale in ("1m", "5m"):
        # The targets are judged on 5 M rows, or on 1 M when a quick run skipped 5 M.
        judged = (scale == "5m") == (res["stats_5m_ms"] is not None)
        stats_pass, empty_pass = (t["stats_ms"]["pass"], t["reconcile_empty_ms"]["pass"]) if judged else ("–", "–")
        lines.append(
            f"| `GET /internal/queue/stats`, {scale[0]} M rows, ms | {fmt(res[f'stats_{scale}_ms'], 2)} | | | "
            f"{'< 10' if judged else '–'} | {stats_pass} |"
        )
        lines.append(
            f"| reconciler pass, 0 candidates, {scale[0]} M rows, ms | "
            f"{fmt(res[f'reconcile_empty_{scale}_ms'], 2)} | | | {'< 20' if judged else '–'} | {empty_pass} |"
        )
        lines.append(
            f"| reconciler pass, 1,000 candidates, {scale[0]} M rows, ms | "
            f"{fmt(res[f'reconcile_1000_{scale}_ms'], 1)} | | | – | – |"
        )
        lines.append(
            f"| listing, status + channel, 50 jobs deep in the walk, {scale[0]} M rows, HTTP p99 ms | "
            f"{fmt(res[f'listing_{scale}_p99_ms'], 2)} | | | {'< 20' if judged else '–'} | "
            f"{t['listing_p99_ms']['pass'] if judged else '–'} |"
        )
    lines.append(
        f"| RSS of an API worker, MB | {fmt(res['rss_mb']['api'], 1)} | | | < 100 | {t['rss_api_mb']['pass']} |"
    )
    lines.append(
        f"| RSS of a delivery worker process, MB (of `wjp worker`'s main process) | {fmt(res['rss_mb']['worker'], 1)} "
        f"({fmt(res['rss_mb']['worker_main'], 1)}) | | | < 100 | {t['rss_worker_mb']['pass']} |"
    )
    e2e_details = (res.get("details") or {}).get("e2e") or {}
    if e2e_details.get("api_saturated"):
        client = e2e_details["client"]
        seen = e2e_details["producer_view_ms"]
        lines += [
            "",
            f"End-to-end: at this rate the API was saturated while the worker ran on the same cores "
            f"(client-side HTTP p50 {fmt(client['http_p50_ms'])} ms, p99 {fmt(client['http_p99_ms'])} ms): "
            f"requests waited in the listen backlog, which created_at → completed_at does not include. "
            f"From the start of each POST to SUCCESS: p50 {fmt(seen['p50'])} ms, p99 {fmt(seen['p99'])} ms.",
        ]
    cpu = res["cpu_us"]
    lines += ["", "CPU per unit of work of the process under test (µs; less sensitive to other users' load):", "",
              "| gunicorn per request: ours / (a) / (b) / (a) gthread / (b) gthread "
              "| worker per job: `log` / webhook / Dramatiq / Celery |",
              "| --- | --- |",
              f"| {' / '.join(fmt(v) for v in cpu['gunicorn_per_request'].values())} | "
              f"{' / '.join(fmt(v) for v in cpu['worker_per_job'].values())} |"]  # fmt: skip
    lines += sustainable.table(res)
    lines += batch.table(res)
    lines += flow.table(res)
    lines += ratelimit.table(res)
    lines += callbacks.table(res)
    return "\n".join(lines)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
