"""A chaos run: its own PostgreSQL and Redis, `wjp serve`, two `wjp worker`s, `wjp reconcile --loop` and a webhook
sink; producers submit notifications while the run kills workers (each while the sink holds one of its deliveries),
flushes and restarts Redis and restarts PostgreSQL; then it checks that every accepted notification was delivered,
once per attempt, nothing lost, every request answered, and that each fault had its effect."""

from __future__ import annotations

import json
import socket
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import redis
from sqlalchemy import select

from actors.broker import NAMESPACE, parse_redis_message_id
from ledger.claims import EARLY_CLAIM_TOLERANCE
from ledger.database import Database
from ledger.errors import LedgerUnavailable
from ledger.schema import attempts, jobs
from ledger.states import WAITING, Status
from tests.chaos.checks import check_answers, check_flush
from tests.chaos.producers import Producers
from tests.chaos.report import ChaosConfig, Flush, Kill, Report
from tests.chaos.servers import PostgresCluster
from tests.chaos.sink import Delivered, running_sink
from tests.conftest import RedisProcess
from tests.drills import DrillSystem, check_outcomes, drain, drill_env, statuses
from tests.e2e.conftest import descendants

#: The run's Dramatiq queue, whose messages FLUSHALL deletes.
QUEUE = "chaos"
#: Seconds a kill waits for the sink to hold a delivery of its worker before it counts as a failure.
HOLD_WAIT = 30.0

WAITING_NAMES = {status.value for status in WAITING}


class ChaosRun:
    """Owns every server and process of one run; `run()` returns the figures and the broken invariants."""

    def __init__(self, config: ChaosConfig, directory: Path | None = None) -> None:
        self.config = config
        self.directory = directory or Path(tempfile.mkdtemp(prefix="wjp-chaos-"))
        self.report = Report(jobs_requested=config.jobs)
        self.kills: list[Kill] = []
        self.flush: Flush | None = None
        self.pg_down: list[tuple[float, float]] = []
        self._started = time.monotonic()

    # -- the run ------------------------------------------------------------------------------------------------
    def run(self) -> Report:
        self._started = time.monotonic()
        self.postgres = PostgresCluster()
        self.redis = RedisProcess(self.directory)
        env = drill_env(self.postgres.url, self.redis.url, QUEUE, WJP_OUTBOX_DIR=str(self.directory / "outbox"))
        self.system = DrillSystem(self.directory, env)
        try:
            self.postgres.init()
            self.postgres.start()
            self.redis.start()
            # The sink's threads ask it who holds each delivery while a kill waits for one (see `_kill_and_replace`).
            self.ledger = Database(self.postgres.url, pool_size=4)
            with running_sink(self.config.sink_think) as sink:
                self.sink = sink
                self.system.start_all(api_workers=self.config.api_workers, worker_threads=self.config.worker_threads)
                self._produce_under_faults()
                self.report.drain_seconds = drain(
                    self.ledger, sink, self.producers.tally.accepted(), self.config.drain_timeout
                )
                self._check()
                self._stop_system()
        finally:
            self.system.kill()
            if hasattr(self, "ledger"):
                self.ledger.dispose()
            self.redis.stop()
            self.postgres.stop()
        self.report.wall_seconds = round(time.monotonic() - self._started, 1)
        return self.report

    def _produce_under_faults(self) -> None:
        producers = Producers(
            self.system.api_url,
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
    def _kill_and_replace(self, slot: int) -> None:
        """kill -9 the worker's process group while the sink holds at least one of its deliveries unanswered, so
        that the kill certainly cuts a delivery short; then the sink answers them (to nobody) and a new worker
        takes the slot."""
        worker = self.system.processes[f"worker{slot}"]
        pids = sorted({worker.pid} | descendants(worker.pid))
        names = {worker_name(pid) for pid in pids}

        def its_delivery(request: Delivered) -> bool:
            if not request.delivered:
                return False
            try:
                holder = self._holders([request.job_id]).get(request.job_id)
            except LedgerUnavailable:
                return False  # not held: answered as any other
            return holder in {(request.attempt, name) for name in names}

        self.sink.hold(its_delivery)
        deadline = time.monotonic() + HOLD_WAIT
        while not self.sink.held() and time.monotonic() < deadline:
            time.sleep(0.005)
        worker.kill()
        held = self.sink.release()
        self.kills.append(Kill(f"worker{slot}", pids, time.monotonic(), [(d.job_id, d.attempt) for d in held]))
        self.system.start_worker(slot, self.config.worker_threads)

    def _flushall(self) -> None:
        """FLUSHALL, reading in the same transaction which Dramatiq messages it deletes."""
        client = redis.Redis(port=self.redis.port, socket_timeout=10)
        pipe = client.pipeline(transaction=True)
        pipe.hkeys(f"{NAMESPACE}:{QUEUE}.msgs").hkeys(f"{NAMESPACE}:{QUEUE}.DQ.msgs").flushall()
        queued, delayed, _ = pipe.execute()
        client.close()
        offset = self.system.processes["reconciler"].log.stat().st_size
        deleted = {parse_redis_message_id(rid.decode()) for rid in queued + delayed}
        status = statuses(self.ledger)
        waiting = {(job_id, seq) for job_id, seq in deleted if status.get(str(job_id)) in WAITING_NAMES}
        self.flush = Flush(deleted, waiting, offset)

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

    # -- after the faults ---------------------------------------------------------------------------------------
    def _check(self) -> None:
        report, tally = self.report, self.producers.tally
        failures = report.failures
        failures.extend(tally.failures)
        status = statuses(self.ledger)
        deliveries = self.sink.deliveries()
        check_outcomes(report, tally.accepted(), status, deliveries)
        report.distinct_webhook_ids = report.deliveries - report.duplicates

        with urllib.request.urlopen(f"{self.system.api_url}/internal/queue/stats", timeout=10) as answer:
            report.stats = json.loads(answer.read())
        if report.stats.get("success") != report.accepted:
            failures.append(f"stats say success={report.stats.get('success')}, accepted={report.accepted}")

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
        if self.flush is None:
            failures.append("FLUSHALL never ran")
        else:
            reconciler_log = self.system.processes["reconciler"].log.read_text(errors="replace")
            check_flush(report, self.flush, self.ledger, reconciler_log, status)
        check_answers(report, tally, self.pg_down, started=self._started)

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
        report.deliveries_cut_by_kills = len(cut)
        report.kills_mid_delivery = len({id(killed[outcome[key][1]]) for key in cut})
        for kill in self.kills:
            closed = [key for key in kill.held if key in cut]
            at = round(kill.at - self._started, 2)
            report.kill_details.append(
                {"worker": kill.worker, "at_s": at, "held": len(kill.held), "held_closed_as_timed_out": len(closed)}
            )
            # Held unanswered as the worker died: each must end as an attempt the reconciler closed as timed out.
            if not kill.held or len(closed) < len(kill.held):
                report.failures.append(
                    f"the kill of {kill.worker} cut short {len(closed)} of the {len(kill.held)} deliveries the sink "
                    "held for it: each kill must cut at least one, and the reconciler close each as timed out"
                )
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

    def _stop_system(self) -> None:
        """SIGTERM everything, as a deployment does: each exits 0 and nothing is left PROCESSING."""
        self.system.terminate(self.report.failures)
        processing = sum(1 for status in statuses(self.ledger).values() if status == Status.PROCESSING.value)
        if processing:
            self.report.failures.append(f"{processing} jobs left PROCESSING after the shutdown")


def worker_name(pid: int) -> str:
    """How the delivery actor names a worker process on attempts (see `actors.ledger_batch.worker_name`)."""
    return f"{socket.gethostname()}:{pid}"
