"""Shared plumbing of the benchmark: where things are, process bookkeeping, CPU accounting, PostgreSQL admin."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
LOGS = ROOT / "var" / "bench"
PYTHON = sys.executable

QUICK = os.environ.get("BENCH_QUICK", "").strip().lower() not in ("", "0", "false", "no")

PG_HOST = os.environ.get("BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("BENCH_PG_USER", "postgres")
#: The benchmark's own database: created and dropped here; no other database is ever touched.
DB_NAME = os.environ.get("BENCH_DB", "wjp_bench")
DATABASE_URL = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{DB_NAME}"
#: A Redis database of its own, so that FLUSHDB here never touches the test suite's database 0.
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "13"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"

#: gthread's threads per worker in the threaded reference rows of the intake phase: the product's count when it ran on
#: gthread (service/gunicorn_conf.py until 7ec7a54), whatever it runs now.
REFERENCE_GTHREADS = 8

TICK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def target(measured: float | None, op: str, goal: float, **extra: object) -> dict:
    """A target of the results: its goal, the figure measured and whether it passed (None: not measured)."""
    ok = None
    if measured is not None and measured == measured:
        ok = {">=": measured >= goal, "<=": measured <= goal, "<": measured < goal}[op]
    rounded = None if measured is None else round(measured, 3)
    return {"target": f"{op} {goal:g}", "measured": rounded, "pass": ok, **extra}


def median(values: Iterable[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port: int, path: str = "/", timeout: float = 20.0) -> None:
    """Wait until something answers HTTP on 127.0.0.1:port (any status)."""
    deadline = time.monotonic() + timeout
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(request)
                if s.recv(16).startswith(b"HTTP/"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port} within {timeout:g}s")


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


# --------------------------------------------------------------------------------------------- processes


def bench_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in list(env):
        if name.startswith(("WJP_", "GUNICORN_")) or name in ("PROMETHEUS_MULTIPROC_DIR", "dramatiq_prom_db"):
            del env[name]
    env.update(
        DATABASE_URL=DATABASE_URL,
        REDIS_URL=REDIS_URL,
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass
class Service:
    """A process group started by the benchmark (a server, a worker, a load generator)."""

    name: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tree(self) -> list[int]:
        return descendants(self.pid, include_self=True)

    def children(self) -> list[int]:
        return [p for p in descendants(self.pid) if p != self.pid]

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start(name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT) -> Service:
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{name}.log"
    out = open(log_path, "ab")  # noqa: SIM115 - handed to the child; closed when we exit
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env or bench_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    return Service(name, proc, log_path)


@contextlib.contextmanager
def running(*services: Service) -> Iterator[tuple[Service, ...]]:
    try:
        yield services
    finally:
        for service in services:
            service.stop()


def _stat(pid: int) -> tuple[int, str, float, float] | None:
    """(ppid, comm, cpu seconds, cpu seconds of its reaped children) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / TICK, (int(fields[13]) + int(fields[14])) / TICK


def process_table() -> dict[int, tuple[int, str, float, float]]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat(int(entry))
            if found is not None:
                table[int(entry)] = found
    return table


def descendants(pid: int, *, include_self: bool = True, table: dict | None = None) -> list[int]:
    table = table or process_table()
    children: dict[int, list[int]] = {}
    for child, (ppid, *_) in table.items():
        children.setdefault(ppid, []).append(child)
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        if current in table and (include_self or current != pid):
            found.append(current)
        todo.extend(children.get(current, []))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds spent so far by a process tree: each process's own, and that of the children it reaped."""
    table = process_table()
    return sum(table[p][2] + table[p][3] for p in descendants(pid, table=table))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    values = list(map(int, Path("/proc/stat").read_text().splitlines()[0].split()[1:]))
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICK, sum(values) / TICK


@dataclass
class CpuMeter:
    """Where the machine's CPU went during a run: our process trees by name (each given by its root pid, which
    comes first in the list), PostgreSQL (our database's backends apart from the rest), Redis, and everything
    else (other users of this shared machine).

    A tree's CPU counts its processes alive at the end, those started meanwhile, and those that ended meanwhile
    (gunicorn recycles workers after max_requests): a reaped child's CPU moves to its parent's cutime/cstime,
    from which its CPU before the run is taken off again."""

    groups: dict[str, list[int]]
    pg_backends: list[int] = field(default_factory=list)
    _t0: float = 0.0
    _start: dict[int, tuple[int, str, float, float]] = field(default_factory=dict)
    _busy0: float = 0.0

    def __enter__(self) -> CpuMeter:
        self._t0 = time.perf_counter()
        self._start = process_table()
        self._busy0 = busy_seconds()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        self._end = process_table()
        self._busy1 = busy_seconds()[0]
        # Backends that connected during the run count too (pooled connections are opened on first use).
        self.pg_backends = sorted(set(self.pg_backends) | set(backends_of_bench()))

    def _same(self, pid: int) -> bool:
        return pid in self._start and pid in self._end and self._start[pid][1] == self._end[pid][1]

    def _used(self, pid: int) -> float:
        if pid not in self._end:
            return 0.0
        return self._end[pid][2] - (self._start[pid][2] if self._same(pid) else 0.0)

    def _tree(self, pids: list[int]) -> float:
        if not pids:
            return 0.0
        root = pids[0]
        start_tree = [p for p in pids if p in self._start]
        end_tree = descendants(root, table=self._end) if root in self._end else []
        total = sum(self._used(p) for p in end_tree)
        # Children reaped during the run: their whole CPU landed in their parent's cutime; take off what they
        # had used before the run.
        for p in set(start_tree) | set(end_tree):
            if self._same(p):
                total += self._end[p][3] - self._start[p][3]
        total -= sum(self._start[p][2] for p in start_tree if p not in self._end)
        return total

    def cores(self) -> dict[str, float]:
        out: dict[str, float] = {}
        claimed: set[int] = set()
        for name, pids in self.groups.items():
            out[name] = self._tree(pids) / self.wall
            claimed.update(pids)
            if pids and pids[0] in self._end:
                claimed.update(descendants(pids[0], table=self._end))
        backends = set(self.pg_backends)
        pg_ours = pg_rest = redis = 0.0
        for pid, (_, comm, _, _) in self._end.items():
            if pid in claimed:
                continue
            if comm.startswith("postgres"):
                if pid in backends:
                    pg_ours += self._used(pid)
                else:
                    pg_rest += self._used(pid)
            elif comm == "redis-server":
                redis += self._used(pid)
        out["postgres_bench_backends"] = pg_ours / self.wall
        out["postgres_other"] = pg_rest / self.wall
        out["redis"] = redis / self.wall
        out["machine_total"] = (self._busy1 - self._busy0) / self.wall
        out["unaccounted_other_users"] = out["machine_total"] - sum(v for k, v in out.items() if k != "machine_total")
        return {k: round(v, 3) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------- PostgreSQL


def admin_connect(dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, autocommit=True)


def bench_connect() -> psycopg.Connection:
    return admin_connect(DB_NAME)


def recreate_database() -> None:
    with admin_connect() as conn:
        drop_database(conn)
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def drop_database(conn: psycopg.Connection | None = None) -> None:
    own = conn is None
    conn = conn or admin_connect()
    try:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (DB_NAME,))
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}"')
    finally:
        if own:
            conn.close()


def backends_of_bench() -> list[int]:
    with admin_connect() as conn:
        return [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (DB_NAME,))]


def db_counters(conn: psycopg.Connection) -> dict[str, int]:
    """Transactions and row changes of the bench database so far (pg_stat_database; flushed every ~0.5 s)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_fetched, tup_returned "
        "FROM pg_stat_database WHERE datname = %s",
        (DB_NAME,),
    ).fetchone()
    names = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_fetched", "tup_returned")
    return dict(zip(names, map(int, row), strict=True))


def redis_commandstats(client) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Calls per Redis command on the whole server (shared with other users: an upper bound)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def run_open_loop(argv: list[str], groups: dict[str, list[int]]) -> tuple[dict, dict[str, float]]:
    """Run the open-loop generator `argv` (bench/openloop.py) to its end, metering `groups` and the bench's
    PostgreSQL backends: its summary (the JSON of its last line) and the cores each group used, the generator's own
    as `load_generator`."""
    meter = CpuMeter(groups, backends_of_bench())
    with meter:
        gen = subprocess.Popen(argv, cwd=ROOT, env=bench_env(), stdout=subprocess.PIPE, text=True)
        out_text = gen.stdout.read() if gen.stdout else ""
        _, _, usage = os.wait4(gen.pid, 0)
        gen.returncode = 0
    cores = meter.cores()
    cores["load_generator"] = round((usage.ru_utime + usage.ru_stime) / meter.wall, 3)
    return json.loads(out_text.strip().splitlines()[-1]), cores
