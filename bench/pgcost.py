"""What each index and trigger of `jobs` costs PostgreSQL per job, on a ledger of realistic size.

    python -m bench.pgcost [ROWS] [GROUP] [GROUPS] [REPS] [VARIANT ...]

Builds (once) the database `BENCH_DB` at the head migration with ROWS history rows (default 1 M, `bench/seed.py`).
Then, with each secondary index, trigger and the `created_xid` default of `jobs` removed in turn (and put back),
and REPS times (default 3) alternating with the schema as it is: GROUPS group INSERTs of GROUP jobs
(`ledger.intake.accept_many`, on a connection set up as the API's kept ones), then claims and completions of those
jobs in statements of GROUP (`ledger.claims`). Per job and per phase, medians: CPU of the backend (from
/proc/PID/schedstat, so run it on the server's machine), WAL bytes, and the server's execution time and buffers
(`pg_stat_statements`, when the server preloads it). VARIANTs (`-<name>`) restrict the run to those. Results go
to bench/results/pgcost.json; figures and their story in bench/README.md.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from bench import common, seed
from ledger import claims, intake
from ledger.database import Database
from ledger.migrate import upgrade
from ledger.timestamps import utcnow

KEPT = ("pk_jobs", "uq_jobs_scope_idempotency_key")  # the INSERT's own: its id and ON CONFLICT need them


@dataclass
class Phase:
    cpu_us: float
    wal_bytes: float
    exec_us: float | None
    blocks: float | None

    def show(self) -> str:
        server = "" if self.exec_us is None else f", server {self.exec_us:6.1f} µs, {self.blocks:5.1f} buffers"
        return f"CPU {self.cpu_us:6.1f} µs, WAL {self.wal_bytes:6.0f} B{server}"


def backend_cpu_us(pid: int) -> float:
    """CPU time of process `pid` so far, to the nanosecond (the scheduler's, where /proc/PID/stat counts ticks)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1000


def wal_lsn(admin: psycopg.Connection) -> int:
    return int(admin.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])


def statements(admin: psycopg.Connection) -> tuple[float, float, float] | None:
    """Total execution ms, buffers touched and WAL bytes written by this database's statements so far (their
    triggers' included; not the commits'); None without the extension."""
    try:
        row = admin.execute(
            "SELECT sum(total_exec_time), sum(shared_blks_hit + shared_blks_read), sum(wal_bytes) "
            "FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND toplevel"
        ).fetchone()
    except psycopg.Error:
        return None
    return float(row[0] or 0), float(row[1] or 0), float(row[2] or 0)


@contextmanager
def measured(admin: psycopg.Connection, pid: int, jobs: int, into: dict[str, Phase], name: str) -> Iterator[None]:
    if statements(admin) is not None:
        admin.execute("SELECT pg_stat_statements_reset()")
    lsn, cpu = wal_lsn(admin), backend_cpu_us(pid)
    yield
    cpu, lsn = backend_cpu_us(pid) - cpu, wal_lsn(admin) - lsn
    server = statements(admin)
    # The statements' own WAL when the extension tells it: the server's WAL position moves with autovacuum too.
    into[name] = Phase(
        cpu / jobs, (lsn if server is None else server[2]) / jobs,
        None if server is None else server[0] * 1000 / jobs, None if server is None else server[1] / jobs,
    )  # fmt: skip


def request(key: str, message: str) -> intake.NewNotification:
    return intake.NewNotification(
        idempotency_key=key, recipient="user@example.com", channel="log", message=message, max_attempts=5
    )


def run_jobs(database: Database, admin: psycopg.Connection, group: int, groups: int, tag: str) -> dict[str, Phase]:
    pid = database.run(lambda conn: conn.exec_driver_sql("SELECT pg_backend_pid()").scalar(), kept=True)
    message = seed.MESSAGE
    batches = [
        [intake.Accepting(request(f"{tag}-{g}-{i}", message), utcnow(), dispatch_now=True) for i in range(group)]
        for g in range(groups)
    ]
    out: dict[str, Phase] = {}
    n = group * groups
    with measured(admin, pid, n, out, "insert"):
        for batch in batches:
            database.run(lambda conn, batch=batch: intake.accept_many(conn, batch), kept=True)
    token = uuid.uuid4()
    with measured(admin, pid, n, out, "claim"):
        for batch in batches:
            pairs = [(item.job_id, 1) for item in batch]
            database.run(
                lambda conn, pairs=pairs: claims.claim_many(conn, pairs, now=utcnow(), worker="w", token=token),
                kept=True,
            )
    with measured(admin, pid, n, out, "succeed"):
        for batch in batches:
            pairs = [(item.job_id, 1) for item in batch]
            database.run(lambda conn, pairs=pairs: claims.succeed_many(conn, pairs, now=utcnow()), kept=True)
    return out


def removals(admin: psycopg.Connection) -> dict[str, tuple[str, str]]:
    """Each variant: the DDL that removes one thing from `jobs`, and the DDL that puts it back."""
    out: dict[str, tuple[str, str]] = {}
    for name, definition in admin.execute(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index "
        "WHERE indrelid = 'jobs'::regclass ORDER BY 1"
    ):
        if name not in KEPT:
            out[f"-{name}"] = (f"DROP INDEX {name}", definition)
    for name, definition in admin.execute(
        "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'jobs'::regclass AND NOT tgisinternal "
        "ORDER BY 1"
    ):
        out[f"-{name}"] = (f"DROP TRIGGER {name} ON jobs", definition)
    default = admin.execute(
        "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef d JOIN pg_attribute a ON (a.attrelid, a.attnum) = "
        "(d.adrelid, d.adnum) WHERE adrelid = 'jobs'::regclass AND attname = 'created_xid'"
    ).fetchone()
    if default:
        out["-created_xid default"] = (
            "ALTER TABLE jobs ALTER COLUMN created_xid DROP DEFAULT",
            f"ALTER TABLE jobs ALTER COLUMN created_xid SET DEFAULT {default[0]}",
        )
    return out


def prepare(rows: int) -> None:
    with common.admin_connect() as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (common.DB_NAME,)).fetchone():
            admin.execute(f'CREATE DATABASE "{common.DB_NAME}"')
    database = Database(common.DATABASE_URL, pool_size=1, kept=0)
    upgrade(database)
    database.dispose()
    with common.bench_connect() as conn:
        if seed.history_rows(conn) < rows:
            common.log(f"seeding {rows:,} rows: {seed.grow_to(conn, rows)}")


def measure(group: int, groups: int) -> dict[str, Phase]:
    database = Database(common.DATABASE_URL, pool_size=1, kept=1)
    try:
        run_jobs(database, admin_connection(), group, 20, f"warm-{uuid.uuid4()}")  # plans, caches
        return run_jobs(database, admin_connection(), group, groups, f"pgcost-{uuid.uuid4()}")
    finally:
        database.dispose()


_admin: list[psycopg.Connection] = []


def admin_connection() -> psycopg.Connection:
    if not _admin:
        _admin.append(common.bench_connect())
    return _admin[0]


def median_phase(phases: list[Phase]) -> Phase:
    def mid(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    servers = [p.exec_us for p in phases if p.exec_us is not None]
    return Phase(
        mid([p.cpu_us for p in phases]), mid([p.wal_bytes for p in phases]),
        mid(servers) if servers else None, mid([p.blocks for p in phases if p.blocks is not None]) if servers else None,
    )  # fmt: skip


def main() -> None:
    args = sys.argv[1:]
    numbers = [int(a) for a in args if a.isdigit()]
    wanted = [a for a in args if not a.isdigit()]
    rows, group, groups, reps = (numbers + [1_000_000, 8, 400, 3][len(numbers) :])[:4]
    prepare(rows)
    admin = admin_connection()
    admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    variants = removals(admin)
    admin.execute("ALTER TABLE jobs SET (autovacuum_enabled = false)")  # its WAL and CPU are no variant's
    common.log(f"{rows:,} rows, groups of {group} × {groups}, {reps} alternations; load {os.getloadavg()}")
    # Each variant alternates with the schema as it is, so that both see the same moment of a shared machine.
    results: dict[str, dict[str, dict[str, Phase]]] = {}
    for name in (v for v in variants if not wanted or v in wanted):
        remove, restore = variants[name]
        runs: dict[str, list[dict[str, Phase]]] = {"as-is": [], name: []}
        for _ in range(reps):
            admin.execute("CHECKPOINT")
            runs["as-is"].append(measure(group, groups))
            admin.execute(remove)
            try:
                admin.execute("CHECKPOINT")
                runs[name].append(measure(group, groups))
            finally:
                admin.execute(restore)
        results[name] = {
            label: {phase: median_phase([run[phase] for run in done]) for phase in done[0]}
            for label, done in runs.items()
        }
        for label in ("as-is", name):
            common.log(f"{label:32s} " + " | ".join(f"{ph} {p.show()}" for ph, p in results[name][label].items()))
    admin.execute("ALTER TABLE jobs RESET (autovacuum_enabled)")
    out = common.RESULTS / "pgcost.json"
    document = {
        "rows": rows, "group": group, "groups": groups, "reps": reps, "load_after": os.getloadavg(),
        "per_job": {name: {label: {ph: vars(p) for ph, p in r.items()} for label, r in pair.items()}
                    for name, pair in results.items()},
    }  # fmt: skip
    out.write_text(json.dumps(document, indent=1))
    common.log(f"→ {out}")


if __name__ == "__main__":
    main()
