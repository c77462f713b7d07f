"""A chaos run: its own PostgreSQL and Redis, `wjp serve`, two `wjp worker`s, `wjp reconcile --loop` and a webhook
sink; producers submit notifications while the run kills workers, flushes and restarts Redis and restarts
PostgreSQL; then it checks that every accepted notification was delivered, once per attempt, and nothing lost."""

from __future__ import annotations

import json
import socket
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import select

from ledger.database import Database
from ledger.schema import attempts, jobs
from ledger.states import Status
from ledger.transitions import EARLY_CLAIM_TOLERANCE
from tests.chaos.producers import Producers
from tests.chaos.servers import PostgresCluster
from tests.chaos.sink import running_sink
from tests.conftest import RedisProcess, free_port
from tests.e2e.conftest import Process, descendants, process_env, run_wjp, wait_for_http


@dataclass(frozen=True)
class ChaosConfig:
    jobs: int = 300
    producer_threads: int = 6
    #: Seconds over which the submissions are spread, so that every fault lands amid traffic.
    spread: float = 30.0
    api_workers: int = 2
    worker_threads: int = 8
    sink_think: float = 0.02
    #: Seconds for every accepted job to reach SUCCESS once the producers are done.
    drain_timeout: float = 300.0
    #: Seconds PostgreSQL stays down in its restart (0: `pg_ctl restart`, as quick as it goes).
    postgres_down: float = 0.0
    #: Seconds redis-server stays down in its restart: long enough for every client to notice.
    redis_down: float = 2.0


@dataclass
class Kill:
    worker: str
    pids: list[int]
    at: float
    #: Deliveries of this worker the sink was still answering when it died (seen just before the kill).
    seen_in_flight: int


@dataclass
class Report:
    jobs_requested: int = 0
    accepted: int = 0
    success: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    distinct_webhook_ids: int = 0
    deliveries: int = 0
    duplicates: int = 0
    attempts_delivered_twice: int = 0
    kills: int = 0
    #: Kills that cut short at least one delivery (the sink got it, the ledger never heard how it ended).
    kills_mid_delivery: int = 0
    #: Per kill: the worker, when, and how many of its deliveries the sink was answering at that moment.
    kill_details: list[dict[str, Any]] = field(default_factory=list)
    deliveries_cut_by_kills: int = 0
    lost: int = 0
    status_codes: dict[str, int] = field(default_factory=dict)
    unexpected_5xx: int = 0
    faults: list[dict[str, Any]] = field(default_factory=list)
    submit_seconds: float = 0.0
    drain_seconds: float = 0.0
    wall_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ok": self.ok}, indent=2)


class ChaosRun:
    """Owns every server and process of one run; `run()` returns the figures and the broken invariants."""

    def __init__(self, config: ChaosConfig, directory: Path | None = None) -> None:
        self.config = config
        self.directory = directory or Path(tempfile.mkdtemp(prefix="wjp-chaos-"))
        self.report = Report(jobs_requested=config.jobs)
        self.kills: list[Kill] = []
        self.pg_down: list[tuple[float, float]] = []
        self._started = time.monotonic()
        self._names = 0

    # -- the run ------------------------------------------------------------------------------------------------
    def run(self) -> Report:
        self._started = time.monotonic()
        self.postgres = PostgresCluster()
        self.redis = RedisProcess(self.directory)
        self.processes: dict[str, Process] = {}
        try:
            self.postgres.init()
            self.postgres.start()
            self.redis.start()
            self.ledger = Database(self.postgres.url, pool_size=2)
            with running_sink(self.config.sink_think) as sink:
                self.sink = sink
                self._start_system()
                self._produce_under_faults()
                self._drain()
                self._check()
                self._stop_system()
        finally:
            for process in self.processes.values():
                process.kill()
            if hasattr(self, "ledger"):
                self.ledger.dispose()
            self.redis.stop()
            self.postgres.stop()
        self.report.wall_seconds = round(time.monotonic() - self._started, 1)
        return self.report

    def _env(self) -> dict[str, str]:
        return process_env(
            DATABASE_URL=self.postgres.url,
            REDIS_URL=self.redis.url,
            WJP_QUEUE="chaos",
            WJP_OUTBOX_DIR=str(self.directory / "outbox"),
            WJP_WEBHOOK_ALLOW_PRIVATE="true",
            WJP_WEBHOOK_TIMEOUT="3",
            WJP_VISIBILITY_TIMEOUT="5",
            WJP_RECONCILE_INTERVAL="1",
            WJP_RECONCILE_GRACE="2",
            WJP_BACKOFF_INITIAL="0.2",
            WJP_BACKOFF_JITTER="0.2",
            WJP_BACKOFF_MAX="2",
        )

    def _start(self, name: str, args: list[str]) -> Process:
        self._names += 1
        process = Process(args, self._env(), self.directory / f"{self._names:02d}-{name}.log")
        self.processes[name] = process
        return process

    def _start_system(self) -> None:
        migrated = run_wjp(["migrate"], self._env())
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        api = self._start("api", ["serve", "--port", str(port), "--workers", str(self.config.api_workers)])
        for slot in (1, 2):
            self._start_worker(slot)
        self._start("reconciler", ["reconcile", "--loop"])
        wait_for_http(f"{self.api_url}/healthz", api)

    def _start_worker(self, slot: int) -> Process:
        args = ["worker", "--processes", "1", "--threads", str(self.config.worker_threads)]
        return self._start(f"worker{slot}", args)

    def _produce_under_faults(self) -> None:
        producers = Producers(
            self.api_url,
            self.sink.url,
            jobs=self.config.jobs,
            threads=self.config.producer_threads,
            spread=self.config.spread,
            run_id=uuid.uuid4().hex[:8],
        )
        self.producers = producers
        schedule: list[tuple[float, str, Callable[[], None]]] = [
            (0.10, "kill -9 worker1 mid-delivery, replacement started", lambda: self._kill_and_replace(1)),
            (0.25, "FLUSHALL", self._flushall),
            (0.40, "redis-server restarted (SHUTDOWN SAVE, down a while, same port and data)", self._restart_redis),
            (0.55, "PostgreSQL restarted (pg_ctl restart -m fast)", self._restart_postgres),
            (0.70, "kill -9 worker2 mid-delivery, replacement started", lambda: self._kill_and_replace(2)),
        ]
        started = time.monotonic()
        producers.start()
        for fraction, name, fault in schedule:
            while producers.tally.accepted_keys < fraction * self.config.jobs and not producers.join(0.0):
                time.sleep(0.02)
            at = time.monotonic()
            fault()
            self.report.faults.append(
                {"fault": name, "at_s": round(at - self._started, 2), "took_s": round(time.monotonic() - at, 2)}
            )
        if not producers.join(timeout=self.config.spread + 600):
            self.report.failures.append("the producers did not finish")
        self.report.submit_seconds = round(time.monotonic() - started, 1)

    # -- faults --------------------------------------------------------------------------------------------------
    def _kill_and_replace(self, slot: int, wait_for_delivery: float = 20.0) -> None:
        """kill -9 the worker's process group while the sink holds a request of it (within `wait_for_delivery`)."""
        worker = self.processes[f"worker{slot}"]
        pids = sorted({worker.pid} | descendants(worker.pid))
        names = {worker_name(pid) for pid in pids}
        deadline = time.monotonic() + wait_for_delivery
        held: list[str] = []
        while not held and time.monotonic() < deadline:
            flying = {(d.job_id, d.attempt) for d in self.sink.in_flight() if d.delivered}
            if flying:
                holders = self._holders([job_id for job_id, _ in flying])
                held = [job_id for job_id, attempt in flying if holders.get(job_id) in {(attempt, n) for n in names}]
            if not held:
                time.sleep(0.005)
        worker.kill()
        self.kills.append(Kill(f"worker{slot}", pids, time.monotonic(), len(held)))
        self._start_worker(slot)

    def _flushall(self) -> None:
        client = redis.Redis(port=self.redis.port, socket_timeout=10)
        client.flushall()
        client.close()

    def _restart_redis(self) -> None:
        # Data kept (the data lost is FLUSHALL's part): whatever the clients held, leases and connections, must
        # survive it.
        self.redis.restart_keeping_data(down_for=self.config.redis_down)

    def _restart_postgres(self) -> None:
        down = time.monotonic()
        self.postgres.restart(down_for=self.config.postgres_down)
        self.pg_down.append((down, time.monotonic()))

    # -- ledger look-ups ----------------------------------------------------------------------------------------
    def _holders(self, job_ids: list[str]) -> dict[str, tuple[int, str]]:
        """Which worker holds each of these jobs at which attempt (PROCESSING rows only)."""
        ids = [uuid.UUID(job_id) for job_id in job_ids if job_id]
        rows = self.ledger.run(
            lambda conn: conn.execute(
                select(jobs.c.id, jobs.c.attempts, jobs.c.worker).where(
                    jobs.c.id.in_(ids), jobs.c.status == Status.PROCESSING.value
                )
            ).all()
        )
        return {str(row.id): (row.attempts, row.worker) for row in rows}

    def _statuses(self) -> dict[str, str]:
        rows = self.ledger.run(lambda conn: conn.execute(select(jobs.c.id, jobs.c.status)).all())
        return {str(row.id): row.status for row in rows}

    # -- after the faults ---------------------------------------------------------------------------------------
    def _drain(self) -> None:
        started = time.monotonic()
        accepted = self.producers.tally.accepted()
        deadline = started + self.config.drain_timeout
        while True:
            statuses = self._statuses()
            waiting = [job_id for job_id in accepted if statuses.get(job_id) != Status.SUCCESS.value]
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        # Every delivery that was sent has been answered (or its sender is dead) before the sink is counted.
        quiet_by = time.monotonic() + 10
        while self.sink.in_flight() and time.monotonic() < quiet_by:
            time.sleep(0.05)
        self.report.drain_seconds = round(time.monotonic() - started, 1)

    def _check(self) -> None:
        report, tally = self.report, self.producers.tally
        failures = report.failures
        failures.extend(tally.failures)
        accepted = tally.accepted()
        statuses = self._statuses()
        report.accepted = len(accepted)
        report.success = sum(1 for job_id in accepted if statuses.get(job_id) == Status.SUCCESS.value)
        report.lost = report.accepted - report.success
        if report.lost:
            stuck = Counter(statuses.get(job_id, "absent from the ledger") for job_id in accepted) - Counter(
                {Status.SUCCESS.value: report.success}
            )
            failures.append(f"{report.lost} accepted jobs did not reach SUCCESS: {dict(stuck)}")
        if unknown := set(statuses) - accepted:
            failures.append(f"{len(unknown)} jobs in the ledger were never answered to a producer")

        with urllib.request.urlopen(f"{self.api_url}/internal/queue/stats", timeout=10) as answer:
            report.stats = json.loads(answer.read())
        if report.stats.get("success") != report.accepted:
            failures.append(f"stats say success={report.stats.get('success')}, accepted={report.accepted}")

        deliveries = self.sink.deliveries()
        ids = {d.webhook_id for d in deliveries}
        report.deliveries = len(deliveries)
        report.distinct_webhook_ids = len(ids)
        report.duplicates = report.deliveries - report.distinct_webhook_ids
        if ids != accepted:
            failures.append(
                f"webhook-ids delivered {len(ids)} vs accepted {len(accepted)}: "
                f"{len(accepted - ids)} never delivered, {len(ids - accepted)} unknown"
            )
        if any(d.webhook_id != d.job_id for d in deliveries):
            failures.append("a delivery's webhook-id differs from the job id in its body")
        early = [
            d.webhook_id
            for d in self.sink.requests()
            if d.arrived_wall < tally.send_at.get(d.webhook_id, 0) - EARLY_CLAIM_TOLERANCE.total_seconds()
        ]
        if early:
            failures.append(f"{len(early)} scheduled notifications arrived before their send_at: {early[:5]}")
        twice = {key: n for key, n in self.sink.per_attempt().items() if n > 1}
        report.attempts_delivered_twice = len(twice)
        if twice:
            failures.append(f"{len(twice)} attempts were delivered more than once: {list(twice)[:5]}")

        self._check_duplicates_against_kills(deliveries)
        self._check_status_codes()

    def _check_duplicates_against_kills(self, deliveries: list) -> None:
        """Every delivery beyond a job's first must follow an attempt cut short by a kill: one the sink received
        from a worker that was then killed, and that the reconciler closed as timed out."""
        report = self.report
        killed = {worker_name(pid): kill for kill in self.kills for pid in kill.pids}
        columns = (attempts.c.job_id, attempts.c.number, attempts.c.outcome, attempts.c.worker)
        rows = self.ledger.run(lambda conn: conn.execute(select(*columns)).all())
        outcome = {(str(r.job_id), r.number): (r.outcome, r.worker) for r in rows}
        delivered = {(d.webhook_id, d.attempt) for d in deliveries}
        cut = {
            key for key in delivered if outcome.get(key, (None, None))[0] == "timed_out" and outcome[key][1] in killed
        }
        report.kills = len(self.kills)
        report.kill_details = [
            {"worker": k.worker, "at_s": round(k.at - self._started, 2), "in_flight_at_sink": k.seen_in_flight}
            for k in self.kills
        ]
        report.deliveries_cut_by_kills = len(cut)
        report.kills_mid_delivery = len({id(killed[outcome[key][1]]) for key in cut})
        per_job = Counter(job_id for job_id, _ in delivered)
        unexplained = []
        for job_id, count in per_job.items():
            if count > 1:
                numbers = sorted(number for j, number in delivered if j == job_id)
                if any((job_id, number) not in cut for number in numbers[:-1]):
                    unexplained.append((job_id, [(n, outcome.get((job_id, n))) for n in numbers]))
        if unexplained:
            report.failures.append(f"{len(unexplained)} jobs delivered again without a kill: {unexplained[:5]}")
        if report.duplicates > report.deliveries_cut_by_kills:
            report.failures.append(
                f"{report.duplicates} duplicate deliveries, more than the {report.deliveries_cut_by_kills} deliveries "
                "cut short by kills"
            )

    def _check_status_codes(self) -> None:
        report = self.report
        report.status_codes = self.producers.tally.histogram()
        unexpected = []
        for answer in self.producers.tally.answers:
            if answer.status >= 500:
                during_outage = any(answer.started <= up and answer.ended >= down for down, up in self.pg_down)
                if answer.status != 503 or not during_outage:
                    unexpected.append(answer)
        report.unexpected_5xx = len(unexpected)
        if unexpected:
            report.failures.append(
                f"{len(unexpected)} unexpected 5xx answers: "
                f"{[(a.status, round(a.started - self._started, 2)) for a in unexpected[:10]]}"
            )

    def _stop_system(self) -> None:
        """SIGTERM everything, as a deployment does: each exits 0 and nothing is left PROCESSING."""
        for name, process in list(self.processes.items()):
            code = process.terminate(timeout=60)
            if code != 0:
                self.report.failures.append(f"{name} exited {code} on SIGTERM: see {process.log}")
        processing = sum(1 for status in self._statuses().values() if status == Status.PROCESSING.value)
        if processing:
            self.report.failures.append(f"{processing} jobs left PROCESSING after the shutdown")

    def logs(self, tail: int = 4000) -> str:
        parts = []
        for path in sorted(self.directory.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)


def worker_name(pid: int) -> str:
    """How the delivery actor names a worker process on attempts (see `actors.delivery.worker_name`)."""
    return f"{socket.gethostname()}:{pid}"
