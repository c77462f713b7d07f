"""What the two fault drills (`tests/chaos`, `tests/failover`) share: the system under test as `wjp` processes with
their logs, the drain, the checks of the ledger and the sink against what the producers were answered, and the end
of their command line."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

from sqlalchemy import select

from ledger.database import Database
from ledger.schema import jobs
from ledger.states import Status
from tests.chaos.servers import missing_servers
from tests.chaos.sink import ChaosSink, Delivered
from tests.conftest import free_port
from tests.e2e.conftest import Process, process_env, run_wjp, wait_for_http

#: Short timeouts, grace and backoff for every process of a drill, so that each fault heals within the run.
QUICK_RECOVERY = {
    "WJP_WEBHOOK_ALLOW_PRIVATE": "true",
    "WJP_WEBHOOK_TIMEOUT": "3",
    "WJP_VISIBILITY_TIMEOUT": "5",
    "WJP_RECONCILE_INTERVAL": "1",
    "WJP_RECONCILE_GRACE": "2",
    "WJP_BACKOFF_INITIAL": "0.2",
    "WJP_BACKOFF_JITTER": "0.2",
    "WJP_BACKOFF_MAX": "2",
}


def drill_env(database_url: str, redis_url: str, queue: str, **more: str) -> dict[str, str]:
    """The environment of every process of a drill."""
    return process_env(DATABASE_URL=database_url, REDIS_URL=redis_url, WJP_QUEUE=queue, **QUICK_RECOVERY, **more)


class DrillSystem:
    """`wjp serve`, two workers and `wjp reconcile --loop`, each a process with its log in `directory`."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.processes: dict[str, Process] = {}
        self.api_url = ""
        # Numbers the logs in start order: a worker started in a killed one's slot takes its name, not its log.
        self._started = 0

    def start(self, name: str, args: list[str]) -> Process:
        self._started += 1
        process = Process(args, self.env, self.directory / f"{self._started:02d}-{name}.log")
        self.processes[name] = process
        return process

    def start_worker(self, slot: int, threads: int) -> Process:
        return self.start(f"worker{slot}", ["worker", "--processes", "1", "--threads", str(threads)])

    def start_all(self, *, api_workers: int, worker_threads: int) -> None:
        """Migrate the ledger, start the API, two workers and the reconciler loop, and wait until the API answers."""
        migrated = run_wjp(["migrate"], self.env)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        api = self.start("api", ["serve", "--port", str(port), "--workers", str(api_workers)])
        for slot in (1, 2):
            self.start_worker(slot, worker_threads)
        self.start("reconciler", ["reconcile", "--loop"])
        wait_for_http(f"{self.api_url}/healthz", api)

    def terminate(self, failures: list[str]) -> None:
        """SIGTERM every process, as a deployment does: each must exit 0."""
        for name, process in list(self.processes.items()):
            code = process.terminate(timeout=60)
            if code != 0:
                failures.append(f"{name} exited {code} on SIGTERM: see {process.log}")

    def kill(self) -> None:
        for process in self.processes.values():
            process.kill()

    def logs(self, tail: int = 4000) -> str:
        parts = []
        for path in sorted(self.directory.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)


def statuses(ledger: Database) -> dict[str, str]:
    """Every job's status, by its id."""
    rows = ledger.run(lambda conn: conn.execute(select(jobs.c.id, jobs.c.status)).all())
    return {str(row.id): row.status for row in rows}


def drain(ledger: Database, sink: ChaosSink, accepted: set[str], timeout: float) -> float:
    """Wait until every accepted job reached SUCCESS (or `timeout` passed), then until the sink has answered every
    delivery sent to it; return the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        status = statuses(ledger)
        waiting = [job_id for job_id in accepted if status.get(job_id) != Status.SUCCESS.value]
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # Every delivery that was sent has been answered (or its sender is dead) before the sink is counted.
    quiet_by = time.monotonic() + 10
    while sink.in_flight() and time.monotonic() < quiet_by:
        time.sleep(0.05)
    return round(time.monotonic() - started, 1)


class Findings:
    """What a drill's report (a dataclass) holds for `check_outcomes`, and its verdict: it held if nothing failed."""

    accepted: int
    success: int
    lost: int
    deliveries: int
    duplicates: int
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ok": self.ok}, indent=2)


def check_outcomes(report: Findings, accepted: set[str], status: dict[str, str], deliveries: list[Delivered]) -> None:
    """Every accepted notification reached SUCCESS and was delivered, and the ledger holds none that a producer was
    not answered; deliveries beyond each notification's first are counted (at-least-once allows them)."""
    report.accepted = len(accepted)
    report.success = sum(1 for job_id in accepted if status.get(job_id) == Status.SUCCESS.value)
    report.lost = report.accepted - report.success
    if report.lost:
        stuck = Counter(status.get(job_id, "absent from the ledger") for job_id in accepted) - Counter(
            {Status.SUCCESS.value: report.success}
        )
        report.failures.append(f"{report.lost} accepted notifications did not reach SUCCESS: {dict(stuck)}")
    if unknown := set(status) - accepted:
        report.failures.append(f"{len(unknown)} jobs in the ledger were never answered to a producer")
    ids = {d.webhook_id for d in deliveries}
    report.deliveries = len(deliveries)
    report.duplicates = report.deliveries - len(ids)
    if ids != accepted:
        report.failures.append(
            f"webhook-ids delivered {len(ids)} vs accepted {len(accepted)}: "
            f"{len(accepted - ids)} never delivered, {len(ids - accepted)} unknown"
        )


class Drill(Protocol):
    """A chaos run or a failover drill, as `run_drill` uses it."""

    directory: Path

    def run(self) -> Findings: ...


def run_drill(name: str, directory: Path | None, build: Callable[[Path | None], Drill], held: str) -> int:
    """A drill's command line once its arguments are read: exit status 2 if a server is missing; otherwise run the
    drill, print its report as JSON and say whether its invariants `held` (0) or not (1)."""
    reason = missing_servers()
    if reason:
        print(f"{name}: cannot run: {reason}", file=sys.stderr)
        return 2
    if directory:
        directory.mkdir(parents=True, exist_ok=True)
    drill = build(directory)
    report = drill.run()
    print(report.to_json())
    if not report.ok:
        print(f"{name}: {len(report.failures)} invariants broken; logs in {drill.directory}", file=sys.stderr)
        return 1
    print(f"{name}: {held}; logs in {drill.directory}", file=sys.stderr)
    return 0
