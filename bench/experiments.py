"""The experiments behind the bottleneck analysis in bench/README.md; each creates and drops its own database.

usage: python -m bench.experiments threads     drain rate, batch size and CPU per job with 8, 16, 32 threads
       python -m bench.experiments plan        the claim/succeed plans with a 20,000-job backlog, before and
                                               after ANALYZE, and index tuples read during a drain
       python -m bench.experiments triggers    server time of claim/succeed with the row triggers of the
                                               migrations vs statement-level triggers with transition tables
       python -m bench.experiments idle        end-to-end latency at 2 and 20 req/s, with Dramatiq's default
                                               consumer back-off (dramatiq_worker_timeout=1000) and with 100
       python -m bench.experiments servers     intake (wrk), API CPU per request and RSS: `wjp serve` on
                                               gunicorn's asyncio worker (asyncio's loop, uvloop), on
                                               uvicorn's worker, and (with
                                               BENCH_GTHREAD_TREE=<checkout>) that checkout's gthread API
                                               (BENCH_OTHER_TREE=<checkout>: that checkout's API as it is;
                                               BENCH_SERVERS=<names>: only those servers)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from bench import common, drain, e2e, harness, intake
from bench.common import bench_connect, log

_STATEMENT_TRIGGERS = """
DROP TRIGGER jobs_attempts ON jobs;
DROP TRIGGER jobs_count_update ON jobs;
CREATE FUNCTION wjp_after_update_stmt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO attempts (job_id, number, started_at, finished_at, outcome, error, worker)
  SELECT n.id, o.attempts, o.claimed_at, n.updated_at, n.last_outcome, n.last_error, o.worker
  FROM new_rows n JOIN old_rows o USING (id)
  WHERE o.status = 'PROCESSING' AND n.status <> 'PROCESSING';
  UPDATE job_counts SET success = job_counts.success + d.success, failed = job_counts.failed + d.failed,
         cancelled = job_counts.cancelled + d.cancelled,
         success_attempts = job_counts.success_attempts + d.success_attempts
  FROM (SELECT count(*) FILTER (WHERE n.status = 'SUCCESS') - count(*) FILTER (WHERE o.status = 'SUCCESS') AS success,
               count(*) FILTER (WHERE n.status = 'FAILED') - count(*) FILTER (WHERE o.status = 'FAILED') AS failed,
               count(*) FILTER (WHERE n.status = 'CANCELLED')
                 - count(*) FILTER (WHERE o.status = 'CANCELLED') AS cancelled,
               coalesce(sum(n.attempts) FILTER (WHERE n.status = 'SUCCESS'), 0)
                 - coalesce(sum(o.attempts) FILTER (WHERE o.status = 'SUCCESS'), 0) AS success_attempts
        FROM new_rows n JOIN old_rows o USING (id) WHERE n.status <> o.status) AS d
  WHERE slot = (txid_current() % 32)::integer AND (d.success <> 0 OR d.failed <> 0 OR d.cancelled <> 0);
  RETURN NULL;
END $$;
CREATE TRIGGER jobs_after_update_stmt AFTER UPDATE ON jobs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION wjp_after_update_stmt();
"""


def threads() -> None:
    for n in (8, 16, 32, 8, 32):
        harness.WORKER_THREADS = n
        out = drain.drain(f"exp-threads-{n}", 10000, "log", "bench-user")
        print(f"threads={n} jobs/s={out['jobs_per_s']} worker_cores={out['cores']['worker']} "
              f"pg_cores={out['cores']['postgres_bench_backends']} others={out['cores']['unaccounted_other_users']} "
              f"commits/job={out['per_job']['pg_commits']} worker_cpu_us/job={out['worker_cpu_us_per_job']}",
              flush=True)  # fmt: skip


def plan() -> None:
    from sqlalchemy import event

    from ledger import claims
    from ledger.database import Database
    from ledger.timestamps import utcnow

    harness.reset_ledger()
    drain.enqueue(20000, "log", "bench-user", "plan")
    db = Database(common.DATABASE_URL)
    with db.engine.connect() as c:
        ids = [(row[0], 1) for row in c.exec_driver_sql("SELECT id FROM jobs ORDER BY created_at LIMIT 3")]
    captured: list = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: captured.append((a[2], a[3])))
    for label in ("statistics as the backlog left them", "after ANALYZE jobs"):
        if label.startswith("after"):
            with bench_connect() as pc:
                pc.execute("ANALYZE jobs")
        with db.engine.connect() as c:
            trans = c.begin()
            captured.clear()
            claims.claim_many(c, ids, now=utcnow(), worker="exp:1")  # the statement, as the product sends it
            statement, params = captured[-1]
            trans.rollback()
            trans = c.begin()
            rows = c.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params).fetchall()
            trans.rollback()
        print(f"=== claim of 3 jobs with 20,000 waiting, {label}")
        print("\n".join("    " + row[0] for row in rows))
    db.dispose()
    for mode in ("as loaded", "ANALYZE after the enqueue"):
        harness.reset_ledger()
        with bench_connect() as c:
            c.execute("SELECT pg_stat_reset()")
        original = drain.enqueue

        def enqueue(*args: object, original=original, mode=mode) -> float:  # type: ignore[no-untyped-def]
            rate = original(*args)
            if mode.startswith("ANALYZE"):
                with bench_connect() as c:
                    c.execute("ANALYZE jobs")
            return rate

        drain.enqueue = enqueue
        out = drain.drain("exp-plan", 10000, "log", "bench-user")
        drain.enqueue = original
        with bench_connect() as c:
            read = dict(c.execute("SELECT indexrelname, idx_tup_read FROM pg_stat_user_indexes "
                                  "WHERE relname = 'jobs'").fetchall())  # fmt: skip
            hot = c.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'jobs'"
            ).fetchone()
        print(f"drain ({mode}): {out['jobs_per_s']} jobs/s, postgres {out['cores']['postgres_bench_backends']} cores, "
              f"index tuples read {read}, updates {hot[0]} of which HOT {hot[1]}", flush=True)  # fmt: skip


def triggers() -> None:
    from ledger import intake
    from ledger.database import Database
    from ledger.timestamps import utcnow

    db = Database(common.DATABASE_URL)
    ids = []
    with db.connect() as conn:
        for i in range(64):
            request = intake.NewNotification(idempotency_key=f"trg-{i}", recipient="u", channel="log",
                                             message="m" * 160, max_attempts=5)  # fmt: skip
            ids.append(str(intake.accept(conn, request, now=utcnow(), dispatch_now=True).job_id))
    db.dispose()
    claim = ("EXPLAIN (ANALYZE) UPDATE jobs SET status = 'PROCESSING', attempts = attempts + 1, claimed_at = now(), "
             "worker = 'w', updated_at = now(), last_outcome = NULL WHERE id = ANY(%s::uuid[]) AND dispatch_seq = 1 "
             "AND status IN ('PENDING', 'RETRY') RETURNING id")  # fmt: skip
    succeed = ("EXPLAIN (ANALYZE) UPDATE jobs SET status = 'SUCCESS', last_outcome = 'success', last_error = NULL, "
               "updated_at = now(), completed_at = now(), claimed_at = NULL WHERE id = ANY(%s::uuid[]) "
               "AND attempts = 1 AND status = 'PROCESSING' RETURNING id")  # fmt: skip
    with common.admin_connect(common.DB_NAME) as pg:
        pg.autocommit = False
        for label in ("row triggers (migrations)", "statement triggers"):
            if label.startswith("statement"):
                pg.execute(_STATEMENT_TRIGGERS)
                pg.commit()
            for batch in (1, 8, 64):
                times: dict[str, list[float]] = {"claim": [], "succeed": []}
                for _ in range(7):
                    for name, sql in (("claim", claim), ("succeed", succeed)):
                        rows = [r[0] for r in pg.execute(sql, (ids[:batch],)).fetchall()]
                        times[name].append(float(next(r for r in rows if r.startswith("Execution Time")).split()[2]))
                    pg.rollback()
                print(
                    f"{label}, batch of {batch}: claim {common.median(times['claim']):.3f} ms, "
                    f"succeed {common.median(times['succeed']):.3f} ms (server execution, median of 7)",
                    flush=True,
                )


def idle() -> None:
    for timeout in ("1000", "100"):
        # Dramatiq's own lower-case variable, read at import in each worker process.
        os.environ["dramatiq_worker_timeout"] = timeout  # noqa: SIM112
        for rate in (2, 20):
            e2e.E2E_SECONDS = 20 if rate == 2 else 10
            out = e2e.phase_e2e(rate * 2)
            print(f"dramatiq_worker_timeout={timeout} rate={rate}/s: e2e p50 {out['p50_ms']} ms "
                  f"p99 {out['p99_ms']} ms; "
                  f"created→claimed p50 {out['split_ms']['created_to_claimed_p50']} ms "
                  f"p99 {out['split_ms']['created_to_claimed_p99']} ms", flush=True)  # fmt: skip
    os.environ.pop("dramatiq_worker_timeout", None)


def _wjp_serve(name: str, tree: Path, **env: str) -> tuple[common.Service, int]:
    """`wjp serve` of the checkout `tree` (with its own .venv). Up to 2 minutes to start: on a machine shared with
    other benches, four workers importing at once took more than `harness.api_server`'s 20 s."""
    port = common.free_port()
    argv = [str(tree / ".venv" / "bin" / "wjp"), "serve", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(intake.API_WORKERS)]  # fmt: skip
    service = common.start(name, argv, env=common.bench_env(PYTHONPATH=str(tree), **env), cwd=tree)
    common.wait_http(port, "/healthz", timeout=120)
    return service, port


def servers() -> None:
    """Intake under wrk and API CPU per request: gunicorn's asyncio worker (the product), with uvloop, uvicorn's
    worker under gunicorn, and, with BENCH_GTHREAD_TREE=<checkout>, that checkout's gthread API; 3 rounds."""
    factories = {
        "gunicorn-asgi": lambda name: _wjp_serve(name, common.ROOT),
        "gunicorn-asgi-uvloop": lambda name: _wjp_serve(name, common.ROOT, GUNICORN_CMD_ARGS="--asgi-loop uvloop"),
        "uvicorn-worker": lambda name: _wjp_serve(
            name, common.ROOT, GUNICORN_CMD_ARGS="--worker-class uvicorn.workers.UvicornWorker"
        ),
    }
    if os.environ.get("BENCH_GTHREAD_TREE"):
        factories["gthread"] = lambda name: _wjp_serve(name, Path(os.environ["BENCH_GTHREAD_TREE"]))
    if os.environ.get("BENCH_OTHER_TREE"):  # another checkout's API as it serves itself: before and after a change
        factories["other-tree"] = lambda name: _wjp_serve(name, Path(os.environ["BENCH_OTHER_TREE"]))
    if os.environ.get("BENCH_SERVERS"):  # only these, e.g. BENCH_SERVERS=gunicorn-asgi,other-tree
        factories = {name: factory for name, factory in factories.items() if name in os.environ["BENCH_SERVERS"]}
    for rep in range(3):
        for name, factory in factories.items():
            service, port = factory(f"exp-{name}-{rep}")
            with common.running(service):
                intake.wrk(port, 2, f"warm-{name}-{rep}")
                harness.reset_ledger()
                meter = common.CpuMeter({"gunicorn": service.tree()}, common.backends_of_bench())
                with meter:
                    figures, _ = intake.wrk(port, 8, f"{name}-{rep}")
                rss = sorted(round(common.rss_mb(pid), 1) for pid in service.children())
            cores = meter.cores()
            per_request = cores["gunicorn"] * meter.wall / figures["requests"] * 1e6
            print(f"intake {name}: {figures['rps']:.0f} req/s, p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} "
                  f"ms; gunicorn {per_request:.0f} µs/request; RSS MB {rss}; loadavg {common.loadavg()}; "
                  f"cores {cores}", flush=True)  # fmt: skip


#: Server models of `models`: gunicorn options given to ours (GUNICORN_CMD_ARGS) and to both baselines alike.
SERVER_MODELS = {
    "asgi-python": ("--worker-class", "asgi", "--http-parser", "python", "--asgi-loop", "asyncio"),
    "asgi-h1c": ("--worker-class", "asgi", "--http-parser", "fast", "--asgi-loop", "asyncio"),
    "asgi-h1c-uvloop": ("--worker-class", "asgi", "--http-parser", "fast", "--asgi-loop", "uvloop"),
    "uvicorn-httptools": ("--worker-class", "bench.uvicorn_workers.HttptoolsAsyncio"),
    "uvicorn-httptools-uvloop": ("--worker-class", "bench.uvicorn_workers.HttptoolsUvloop"),
}


def models() -> None:
    """Ours, (a) and (b) of the intake phase on each server model of SERVER_MODELS (BENCH_MODELS=<names>: only
    those), like with like: the three in turn on one model, then the next model; BENCH_INTAKE_REPS rounds."""

    chosen = [m for m in os.environ.get("BENCH_MODELS", ",".join(SERVER_MODELS)).split(",") if m]
    lent = intake.Harness(harness.reset_ledger, harness.api_server, harness.r)
    apps = {"baseline_insert": intake.BASELINES["baseline_insert"][0],
            "baseline_naive": intake.BASELINES["baseline_naive"][0]}  # fmt: skip
    for rep in range(intake.INTAKE_REPS):
        for model in chosen:
            options = SERVER_MODELS[model]
            servers = {
                "intake": lambda o=options: harness.api_server("exp-intake", GUNICORN_CMD_ARGS=" ".join(o)),
                **{name: lambda app=app, o=options: intake.baseline_server("exp-baseline", app, "asyncio", options=o)
                   for name, app in apps.items()},
            }  # fmt: skip
            order = list(servers)
            order = order[rep % 3 :] + order[: rep % 3]
            rps: dict[str, float] = {}
            for name in order:
                service, port = servers[name]()
                with common.running(service):
                    figures, rss = intake.measure(lent, name, rep, service, port)
                rps[name] = figures["rps"]
                print(f"{model:26s} rep {rep + 1} {name:16s} {figures['rps']:7.0f} req/s  "
                      f"gunicorn {figures['gunicorn_cpu_us_per_req']:5d} µs/req  p99 {figures['p99_ms']:.1f} ms  "
                      f"non-2xx {figures['non_2xx']}  commits/req {figures['pg_commits_per_req']}  "
                      f"other users {figures['cores']['unaccounted_other_users']:.2f}  "
                      f"pg {figures['cores']['postgres_bench_backends']:.2f}  loadavg {common.loadavg()[0]:.1f}"
                      f"{'  RSS MB ' + str(sorted(rss.values())) if rss else ''}", flush=True)  # fmt: skip
            print(f"{model:26s} rep {rep + 1} ratios: vs (a) {rps['intake'] / rps['baseline_insert']:.2f}, "
                  f"vs (b) {rps['intake'] / rps['baseline_naive']:.2f}", flush=True)


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    experiments = {"threads": threads, "plan": plan, "triggers": triggers, "idle": idle, "servers": servers,
                   "models": models}  # fmt: skip
    if what not in experiments:
        raise SystemExit(__doc__)
    log(f"experiment {what}; loadavg {common.loadavg()}")
    harness.setup_database()
    started = time.time()
    try:
        experiments[what]()
    finally:
        common.drop_database()
    log(f"done in {time.time() - started:.0f} s; loadavg {common.loadavg()}")


if __name__ == "__main__":
    main()
