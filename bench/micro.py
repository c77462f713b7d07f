"""Micro-benchmarks of the hot paths' pieces, in one process on one connection: µs of wall and CPU per call.

They say what each piece of intake and delivery costs and what a leaner way of doing the same costs, so that
the figures of `make bench` can be traced to code. Run apart from `make bench`:

    python -m bench.micro            (creates and drops its own database, like bench/run.py)

Each line: name, wall µs/call, CPU µs/call (process time, i.e. client-side Python + driver work).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="wjp-bench-metrics-"))

from bench import common
from bench.common import DATABASE_URL, REDIS_URL, RESULTS, log

N = int(os.environ.get("BENCH_MICRO_N", "3000"))
MESSAGE = "Hello, this is a notification body of roughly one hundred and sixty characters used for the micro " \
          "benchmark; it is padded to be realistic....."  # fmt: skip


def measure(name: str, fn: Callable[[int], object], n: int = N, per: int = 1) -> dict:
    for i in range(min(200, n)):
        fn(-i - 1)
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        fn(i)
    wall, cpu = (time.perf_counter() - t0) / (n * per) * 1e6, (time.process_time() - c0) / (n * per) * 1e6
    log(f"  {name:62s} wall {wall:8.1f} µs   cpu {cpu:8.1f} µs")
    return {"name": name, "wall_us": round(wall, 1), "cpu_us": round(cpu, 1)}


def intake_pieces() -> list[dict]:
    import falcon
    import psycopg
    import sqlalchemy as sa
    from falcon import testing

    from actors.broker import Dispatcher, make_broker
    from actors.channels import build_channels
    from actors.settings import Settings
    from ledger import intake
    from ledger.database import Database
    from ledger.ids import uuid7
    from ledger.timestamps import rfc3339, utcnow
    from ledger.transitions import Dispatch
    from service import metrics
    from service.validation import parse_notification

    settings = Settings.from_env()
    channels = build_channels(settings.channels)
    database = Database(DATABASE_URL, pool_size=2)
    dispatcher = Dispatcher(make_broker(REDIS_URL), "micro")
    run_tag = uuid.uuid4().hex[:8]
    out = []

    def request(i: int, tag: str) -> intake.NewNotification:
        return intake.NewNotification(
            idempotency_key=f"{run_tag}-{tag}-{i}", recipient="user@example.com", channel="log", message=MESSAGE,
            max_attempts=5,
        )  # fmt: skip

    body = {"idempotency_key": "k", "recipient": "user@example.com", "channel": "log", "message": MESSAGE}
    raw_body = json.dumps(body).encode()
    out.append(measure("json.loads + parse_notification (validation)", lambda i: parse_notification(
        json.loads(raw_body), header_key=None, channels=channels, max_attempts=5, scope="")))  # fmt: skip
    out.append(measure("NewNotification.payload_hash", lambda i: request(i, "h").payload_hash()))
    out.append(measure("uuid7 + utcnow + rfc3339", lambda i: rfc3339(utcnow()) and uuid7()))
    out.append(measure("metrics.count_intake (prometheus multiprocess)", lambda i: metrics.count_intake("created")))

    def product_accept(i: int) -> object:
        req, now = request(i, "a"), utcnow()
        return database.run(lambda conn: intake.accept(conn, req, now=now, dispatch_now=True))

    out.append(measure("PRODUCT Database.run(intake.accept) (AUTOCOMMIT via execution_options)", product_accept))

    engine_ac = sa.create_engine(DATABASE_URL.replace("postgresql://", "postgresql+psycopg://"),
                                 isolation_level="AUTOCOMMIT", pool_size=2)  # fmt: skip

    def engine_level_autocommit(i: int) -> object:
        req, now = request(i, "b"), utcnow()
        with engine_ac.connect() as conn:
            return intake.accept(conn, req, now=now, dispatch_now=True)

    out.append(measure("accept on an engine created AUTOCOMMIT (no per-checkout toggle)", engine_level_autocommit))

    held = engine_ac.connect()

    def persistent_connection(i: int) -> object:
        req, now = request(i, "c"), utcnow()
        return intake.accept(held, req, now=now, dispatch_now=True)

    out.append(measure("accept on one held SQLAlchemy Connection (no pool checkout)", persistent_connection))

    keys = ["id", "scope", "idempotency_key", "payload_hash", "recipient", "channel", "message", "subject",
            "metadata", "send_at", "status", "attempts", "max_attempts", "next_attempt_at", "dispatch_seq",
            "created_at", "updated_at"]  # fmt: skip
    # The psycopg dialect compiles to %(name)s placeholders: the very statement the product sends.
    sql_pyformat = str(intake._INSERT["postgresql"].compile(dialect=engine_ac.dialect, column_keys=keys))
    pg = psycopg.connect(DATABASE_URL, autocommit=True)
    cur = pg.cursor()

    def raw_psycopg(i: int) -> object:
        req, now = request(i, "d"), utcnow()
        job_id = uuid7()
        params = {
            "id": job_id, "scope": "", "idempotency_key": req.idempotency_key, "payload_hash": req.payload_hash(),
            "recipient": req.recipient, "channel": req.channel, "message": req.message, "subject": None,
            "metadata": None, "send_at": None, "status": "PENDING", "attempts": 0, "max_attempts": 5,
            "next_attempt_at": now, "dispatch_seq": 1, "created_at": now, "updated_at": now,
        }  # fmt: skip
        cur.execute(sql_pyformat, params, prepare=True)
        return cur.fetchone()

    out.append(measure("same INSERT … ON CONFLICT … RETURNING via raw psycopg, prepared", raw_psycopg))

    base_engine = sa.create_engine(DATABASE_URL.replace("postgresql://", "postgresql+psycopg://"))
    from bench.baseline_app import INSERT as BASE_INSERT

    def baseline_insert(i: int) -> None:
        with base_engine.begin() as conn:
            conn.execute(BASE_INSERT, {"id": uuid.uuid4(), "idempotency_key": f"{run_tag}-e-{i}",
                                       "recipient": "user@example.com", "channel": "log", "message": MESSAGE,
                                       "status": "PENDING", "created_at": utcnow()})  # fmt: skip

    out.append(measure("BASELINE (a) engine.begin() + insert() (3 round trips)", baseline_insert))

    now = utcnow()

    def product_send(i: int) -> None:
        dispatcher.send([Dispatch(uuid.uuid4(), 1, now)], now=now)

    out.append(measure("PRODUCT Dispatcher.send (dramatiq enqueue, Lua dispatch script)", product_send))

    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    plain = RedisBroker(url=REDIS_URL)
    actor = dramatiq.actor(lambda job_id: None, actor_name="micro_plain", queue_name="micro_plain", broker=plain)
    out.append(measure("BASELINE (b) actor.send() (default broker and middleware)", lambda i: actor.send("x")))

    client = dispatcher.broker.client
    encoded = dramatiq.Message(queue_name="micro", actor_name="deliver", args=("x",), kwargs={},
                               options={"wjp_rid": "x.1"}).encode()  # fmt: skip

    def raw_hset_rpush(i: int) -> None:
        pipe = client.pipeline(transaction=False)
        pipe.hset("dramatiq:micro_raw.msgs", f"{i}", encoded)
        pipe.rpush("dramatiq:micro_raw", f"{i}")
        pipe.execute()

    out.append(measure("raw pipeline HSET + RPUSH (one round trip, no Lua, no middleware)", raw_hset_rpush))
    out.append(measure("raw redis PING (one round trip floor)", lambda i: client.ping()))
    client.delete("dramatiq:micro", "dramatiq:micro.msgs", "dramatiq:micro_raw", "dramatiq:micro_raw.msgs",
                  "dramatiq:micro_plain", "dramatiq:micro_plain.msgs")  # fmt: skip

    # The whole falcon app in-process (no HTTP server): what one POST costs our code, and the baseline's.
    os.environ.setdefault("WJP_QUEUE", "micro")
    from service.app import create_app_from_env

    sim = testing.TestClient(create_app_from_env())

    def post(i: int) -> None:
        doc = dict(body, idempotency_key=f"{run_tag}-f-{i}")
        assert sim.simulate_post("/api/notifications", json=doc).status_code in (200, 202)

    out.append(measure("PRODUCT falcon app POST in-process (no HTTP server)", post, n=N // 2))
    from bench import baseline_app

    base_sim = testing.TestClient(baseline_app.naive_app)

    def post_naive(i: int) -> None:
        doc = dict(body, idempotency_key=f"{run_tag}-g-{i}")
        assert base_sim.simulate_post("/api/notifications", json=doc).status_code == 202

    out.append(measure("BASELINE (b) falcon app POST in-process", post_naive, n=N // 2))
    base_sim_a = testing.TestClient(baseline_app.insert_app)

    def post_insert(i: int) -> None:
        doc = dict(body, idempotency_key=f"{run_tag}-h-{i}")
        assert base_sim_a.simulate_post("/api/notifications", json=doc).status_code == 202

    out.append(measure("BASELINE (a) falcon app POST in-process", post_insert, n=N // 2))
    del falcon
    held.close()
    pg.close()
    database.dispose()
    client.delete("dramatiq:micro", "dramatiq:micro.msgs", "dramatiq:micro_plain", "dramatiq:micro_plain.msgs")
    return out


def worker_pieces() -> list[dict]:
    import logging

    from actors.batching import Batcher
    from ledger import claims, intake
    from ledger.database import Database
    from ledger.timestamps import utcnow

    database = Database(DATABASE_URL, pool_size=2)
    out = []
    total = N * 8 + N * 4 + 2000
    ids: list[tuple[uuid.UUID, int]] = []
    tag = uuid.uuid4().hex[:8]
    with database.connect() as conn:
        for i in range(total):
            req = intake.NewNotification(idempotency_key=f"{tag}-w-{i}", recipient="u", channel="log",
                                         message=MESSAGE, max_attempts=5)  # fmt: skip
            res = intake.accept(conn, req, now=utcnow(), dispatch_now=True)
            ids.append((res.job_id, 1))
    it = iter(ids)
    for batch in (1, 8):
        claimed: list = []

        def claim(i: int, batch: int = batch, claimed: list = claimed) -> None:
            chunk = [next(it) for _ in range(batch)]
            jobs = database.run(lambda conn: claims.claim_many(conn, chunk, now=utcnow(), worker="micro:1"))
            claimed.extend((j.id, j.attempt) for j in jobs if j)

        n = N // batch if batch > 1 else N // 2
        out.append(measure(f"PRODUCT claim_many, batch of {batch} (per job)", claim, n=n, per=batch))
        done = iter(claimed)

        def succeed(i: int, batch: int = batch, done=done) -> None:  # type: ignore[no-untyped-def]
            chunk = [next(done) for _ in range(batch)]
            database.run(lambda conn: claims.succeed_many(conn, chunk, now=utcnow()))

        n_ok = len(claimed) // batch // 2  # measure() runs up to n_ok warm-up calls first
        out.append(measure(f"PRODUCT succeed_many, batch of {batch} (per job)", succeed, n=n_ok, per=batch))

    # The same two transitions as one constant statement each over arrays (unnest), on a raw psycopg
    # connection with server-side prepared statements: what the ledger round trips cost without SQLAlchemy.
    import psycopg

    pg = psycopg.connect(DATABASE_URL, autocommit=True)
    claim_sql = """
        UPDATE jobs SET status = 'PROCESSING', attempts = jobs.attempts + 1, claimed_at = %(now)s,
               worker = %(worker)s, updated_at = %(now)s, last_outcome = NULL
        FROM unnest(%(ids)s::uuid[], %(seqs)s::int[]) AS d(id, seq)
        WHERE jobs.id = d.id AND jobs.dispatch_seq = d.seq AND jobs.status IN ('PENDING', 'RETRY')
          AND jobs.next_attempt_at <= %(due_by)s
        RETURNING jobs.id, jobs.recipient, jobs.channel, jobs.message, jobs.subject, jobs.metadata,
                  jobs.attempts, jobs.max_attempts"""
    succeed_sql = """
        UPDATE jobs SET status = 'SUCCESS', last_outcome = 'success', last_error = NULL, updated_at = %(now)s,
               completed_at = %(now)s, claimed_at = NULL
        FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS d(id, attempt)
        WHERE jobs.id = d.id AND jobs.attempts = d.attempt AND jobs.status = 'PROCESSING'
        RETURNING jobs.id"""
    for batch in (1, 8):
        got: list = []

        def raw_claim(i: int, batch: int = batch, got: list = got) -> None:
            chunk = [next(it) for _ in range(batch)]
            now = utcnow()
            rows = pg.execute(claim_sql, {"now": now, "worker": "micro:1", "due_by": now, "ids": [c[0] for c in chunk],
                                          "seqs": [c[1] for c in chunk]}, prepare=True).fetchall()  # fmt: skip
            got.extend((row[0], row[6]) for row in rows)

        n = N // batch // 2
        out.append(measure(f"raw psycopg claim over unnest(arrays), prepared, batch of {batch}", raw_claim, n=n,
                           per=batch))  # fmt: skip
        todo = iter(got)

        def raw_succeed(i: int, batch: int = batch, todo=todo) -> None:  # type: ignore[no-untyped-def]
            chunk = [next(todo) for _ in range(batch)]
            pg.execute(succeed_sql, {"now": utcnow(), "ids": [c[0] for c in chunk], "attempts": [c[1] for c in chunk]},
                       prepare=True).fetchall()  # fmt: skip

        out.append(measure(f"raw psycopg succeed over unnest(arrays), prepared, batch of {batch}", raw_succeed,
                           n=len(got) // batch // 2, per=batch))  # fmt: skip
    pg.close()

    handler = logging.FileHandler(os.devnull)
    handler.setFormatter(logging.Formatter("[%(asctime)s] [PID %(process)d] [%(threadName)s] [%(name)s] "
                                           "[%(levelname)s] %(message)s"))  # fmt: skip
    logger = logging.getLogger("micro")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    line = "✅ Job %s success (%s, attempt %d, %.0f ms)"
    out.append(
        measure("one log line at INFO (dramatiq's format, to a file)", lambda i: logger.info(line, "x", "log", 1, 1.0))
    )

    # Cross-thread hand-off cost of the Batcher: 8 threads submitting to a batch function that does nothing.
    batcher: Batcher[int, int] = Batcher(lambda items: items, "micro")
    per_thread = N

    def thread_body() -> None:
        for i in range(per_thread):
            batcher.submit(i)

    threads = [threading.Thread(target=thread_body) for _ in range(8)]
    c0, t0 = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n = per_thread * 8
    wall, cpu = (time.perf_counter() - t0) / n * 1e6, (time.process_time() - c0) / n * 1e6
    name = "Batcher.submit hand-off, 8 threads, no-op batch (per request)"
    log(f"  {name:62s} wall {wall:8.1f} µs   cpu {cpu:8.1f} µs")
    out.append({"name": "Batcher.submit hand-off, 8 threads, no-op batch", "wall_us": round(wall, 1),
                "cpu_us": round(cpu, 1)})  # fmt: skip
    database.dispose()
    return out


def main() -> None:
    os.environ["DATABASE_URL"] = DATABASE_URL
    os.environ["REDIS_URL"] = REDIS_URL
    from bench import harness

    harness.setup_database()
    try:
        log(f"micro-benchmarks, {N} calls each; loadavg {common.loadavg()}")
        results = {"intake": intake_pieces(), "worker": worker_pieces(), "loadavg": common.loadavg()}
    finally:
        common.drop_database()
    common.write_json(RESULTS / "micro.json", results)


if __name__ == "__main__":
    main()
