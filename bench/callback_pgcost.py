"""What a status callback costs PostgreSQL, statement by statement, against a job without one (issue 20).

    python -m bench.callback_pgcost [GROUP] [GROUPS] [REPS]

On the database `BENCH_DB` at the head migration (created when missing), on one kept connection as a worker's ledger
batcher uses it: GROUPS groups of GROUP `log` jobs inserted, then claimed, succeeded (which arms each job's callback
claimed for this worker) and their callbacks' deliveries recorded, in statements of GROUP as the worker's batches
run them (`run`); with no callback, and with the deliveries in a statement of their own or riding the jobs',
alternated REPS times. Per job, medians of the backend's CPU (/proc/PID/schedstat: run it on the server's machine)
and of the WAL written (commits included). Figures and their story in bench/README.md.
"""

from __future__ import annotations

import sys
import uuid

from sqlalchemy import Connection

from bench import common
from bench.common import median
from bench.pgcost import backend_cpu_us, prepare, wal_lsn
from ledger import callbacks, claims, intake
from ledger.database import Database
from ledger.timestamps import utcnow

CALLBACK_URL = "http://127.0.0.1:9/status"


def _request(key: str, callback: bool) -> intake.NewNotification:
    return intake.NewNotification(
        idempotency_key=key, recipient="bench-user", channel="log", message="hello", max_attempts=5,
        destination="log", callback_url=CALLBACK_URL if callback else None,
        callback_destination="webhook:127.0.0.1:9" if callback else None,
    )  # fmt: skip


def run(database: Database, group: int, groups: int, mode: str) -> dict[str, tuple[float, float]]:
    """CPU µs and WAL bytes per job: of the intake, and of the worker's statements as its ledger batches run them,
    each claiming batch g while recording the successes of batch g - 1 (the statement that arms their callbacks)
    and the deliveries of the callbacks of batch g - 2: in the callbacks' own statement after it (`own`), or in the
    same statement (`riding`); `without`: no callback."""
    pid = database.run(lambda conn: conn.exec_driver_sql("SELECT pg_backend_pid()").scalar(), kept=True)
    admin = common.bench_connect()
    tag = uuid.uuid4()
    batches = [[intake.Accepting(_request(f"cbpg-{tag}-{g}-{i}", mode != "without"), utcnow(), dispatch_now=True)
                for i in range(group)] for g in range(groups)]  # fmt: skip
    ids = [[item.job_id for item in batch] for batch in batches]
    n = group * groups
    out: dict[str, tuple[float, float]] = {}
    cpu, lsn = backend_cpu_us(pid), wal_lsn(admin)
    for batch in batches:
        database.run(lambda conn, batch=batch: intake.accept_many(conn, batch), kept=True)
    out["insert"] = ((backend_cpu_us(pid) - cpu) / n, (wal_lsn(admin) - lsn) / n)
    token, none = uuid.uuid4(), [[]]
    cpu, lsn = backend_cpu_us(pid), wal_lsn(admin)
    for g in range(groups + 2):
        claiming, succeeding, delivering = ((ids + none * 3)[g], (none + ids + none * 2)[g],
                                            (none * 2 + ids + none)[g])  # fmt: skip
        if mode == "without":
            delivering = []
        held = [(i, 1) for i in delivering]

        def statement(conn: Connection, claiming=claiming, succeeding=succeeding, held=held) -> None:
            claims.succeed_and_claim(
                conn, [(i, 1) for i in succeeding], [(i, 1) for i in claiming], now=utcnow(), worker="bench",
                token=token, database_clock=True, finished={}, delivered=held if mode == "riding" else [],
            )  # fmt: skip

        database.run(statement, kept=True)
        if mode == "own" and held:
            database.run(lambda conn, held=held: callbacks.succeed_and_claim(conn, held, [], now=utcnow()), kept=True)
    out["worker"] = ((backend_cpu_us(pid) - cpu) / n, (wal_lsn(admin) - lsn) / n)
    admin.close()
    return out


def main() -> None:
    group, groups, reps = ([int(a) for a in sys.argv[1:]] + [8, 300, 3][len(sys.argv) - 1 :])[:3]
    prepare(0)
    database = Database(common.DATABASE_URL, pool_size=1, kept=1)
    modes = ("without", "own", "riding")
    for mode in modes:  # plans, caches
        run(database, group, 20, mode)
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for _ in range(reps):
        for mode in modes:
            runs[mode].append(run(database, group, groups, mode))
    database.dispose()
    for mode, done in runs.items():
        phases = {ph: (median(r[ph][0] for r in done), median(r[ph][1] for r in done)) for ph in done[0]}
        common.log(f"{mode:8s} " + " | ".join(f"{ph} {cpu:6.1f} µs {wal:5.0f} B" for ph, (cpu, wal) in phases.items()))


if __name__ == "__main__":
    main()
