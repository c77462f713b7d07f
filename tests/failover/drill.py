"""A failover drill: PostgreSQL primary and synchronous standby, Redis master, replica and three Sentinels,
`wjp serve`, two workers, `wjp reconcile --loop` and a webhook sink; producers post at a steady rate (retrying each
503 with the same key) while the drill kills the Redis master, then the PostgreSQL primary and promotes its standby.
Every process is told both PostgreSQL hosts and the Sentinels, and must follow on its own; nothing accepted may be
lost."""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import select

from ledger.database import Database
from ledger.schema import jobs
from tests.chaos.producers import Answer, Producers
from tests.chaos.sink import running_sink
from tests.drills import DrillSystem, check_outcomes, drain, drill_env, statuses
from tests.failover.report import DrillConfig, DrillReport, Failover
from tests.failover.servers import ReplicatedCluster, SentinelGroup

QUEUE = "failover"


class FailoverDrill:
    """Owns every server and process of one drill; `run()` returns its figures and what went wrong."""

    def __init__(self, config: DrillConfig, directory: Path | None = None) -> None:
        self.config = config
        self.directory = directory or Path(tempfile.mkdtemp(prefix="wjp-failover-"))
        self.report = DrillReport()
        self._started = time.monotonic()
        #: (monotonic, wall) of each kill.
        self._kills: dict[str, tuple[float, float]] = {}
        #: Wall time at which each new primary or master was in place.
        self._promoted: dict[str, float] = {}

    @property
    def database_url(self) -> str:
        hosts = f"127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
        return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write"

    def run(self) -> DrillReport:
        self._started = time.monotonic()
        self.primary, self.standby = ReplicatedCluster(), ReplicatedCluster()
        self.redis = SentinelGroup(self.directory / "redis")
        self.system = DrillSystem(self.directory, drill_env(self.database_url, self.redis.url, QUEUE))
        try:
            self.primary.init_primary(synchronous=True)
            self.primary.start()
            self.standby.init_standby(self.primary)
            self.standby.start()
            self.redis.start()
            # The drill's own look-ups follow the failover as the system's processes must.
            self.ledger = Database(self.database_url, pool_size=2)
            with running_sink(0.01) as sink:
                self.sink = sink
                self.system.start_all(api_workers=self.config.api_workers, worker_threads=self.config.worker_threads)
                self._produce_through_failovers()
                self.report.drain_seconds = drain(
                    self.ledger, sink, self.producers.tally.accepted(), self.config.drain_timeout
                )
                self._check()
                self.system.terminate(self.report.failures)
        finally:
            self.system.kill()
            if hasattr(self, "ledger"):
                self.ledger.dispose()
            self.redis.stop()
            self.primary.stop()
            self.standby.stop()
        self.report.wall_seconds = round(time.monotonic() - self._started, 1)
        return self.report

    def _produce_through_failovers(self) -> None:
        seconds = self.config.seconds
        self.producers = Producers(
            self.system.api_url,
            self.sink.url,
            jobs=int(self.config.rate * seconds / 2),  # each posted twice
            threads=self.config.producer_threads,
            spread=seconds,
            run_id=uuid.uuid4().hex[:8],
        )
        started = time.monotonic()
        self.producers.start()
        self._sleep_until(started + seconds / 3)
        self._kill_redis_master()
        self._sleep_until(started + 2 * seconds / 3)
        self._kill_postgres_primary()
        if not self.producers.join(timeout=seconds + 300):
            self.report.failures.append("the producers did not finish")
        self.report.submit_seconds = round(time.monotonic() - started, 1)

    @staticmethod
    def _sleep_until(moment: float) -> None:
        time.sleep(max(0.0, moment - time.monotonic()))

    def _kill_redis_master(self) -> None:
        old = self.redis.master.port
        self._kills["redis"] = (time.monotonic(), time.time())
        self.redis.master.kill()
        self.redis.wait_for_new_master(old)
        self._promoted["redis"] = time.time()
        self.report.redis.promoted_s = round(time.monotonic() - self._kills["redis"][0], 2)

    def _kill_postgres_primary(self) -> None:
        self._kills["postgres"] = (time.monotonic(), time.time())
        self.primary.kill()
        time.sleep(self.config.promote_after)
        self.standby.promote()
        self._promoted["postgres"] = time.time()
        self.report.postgres.promoted_s = round(time.monotonic() - self._kills["postgres"][0], 2)

    def _check(self) -> None:
        report, tally = self.report, self.producers.tally
        report.failures.extend(tally.failures)
        check_outcomes(report, tally.accepted(), statuses(self.ledger), self.sink.deliveries())

        report.status_codes = tally.histogram()
        with tally.lock:
            answers = list(tally.answers)
        unanswered = [a for a in answers if not a.status]
        report.transport_errors = len(unanswered)
        if unanswered:
            report.failures.append(f"{len(unanswered)} POSTs got no HTTP answer: {[a.error for a in unanswered[:5]]}")
        unavailable = [a for a in answers if a.status == 503]
        report.answers_503 = len(unavailable)
        report.intake_503_seconds = _span(unavailable)
        if other := [a.status for a in answers if a.status >= 500 and a.status != 503]:
            report.failures.append(f"{len(other)} 5xx answers other than 503: {other[:10]}")
        self._measure(report.redis, "redis", answers, until=self._kills["postgres"][0])
        self._measure(report.postgres, "postgres", answers, until=float("inf"))
        if report.redis.answers_503:
            report.failures.append(f"intake answered {report.redis.answers_503} 503s while Redis failed over")

    def _measure(self, failover: Failover, name: str, answers: list[Answer], *, until: float) -> None:
        """How long after its kill intake answered 503 for the last time, and the first notification accepted by
        the new primary or master (no earlier one, which the dying server may still have served) was delivered."""
        killed, killed_wall = self._kills[name]
        failover.at_s = round(killed - self._started, 2)
        # Answered before the next fault: a POST still in flight when the next server is killed (the PostgreSQL
        # primary, while Redis's window is measured) is that fault's to answer, whenever it started.
        window = [a for a in answers if (killed <= a.started or a.started < killed < a.ended) and a.ended < until]
        unavailable = [a for a in window if a.status == 503]
        failover.answers_503 = len(unavailable)
        failover.intake_503_seconds = _span(unavailable)
        failover.intake_healed_s = round(max((a.ended for a in unavailable), default=killed) - killed, 2)
        created = self.ledger.run(lambda conn: conn.execute(select(jobs.c.id, jobs.c.created_at)).all())
        after = {str(row.id) for row in created if row.created_at.timestamp() >= self._promoted[name]}
        arrivals = [d.arrived_wall for d in self.sink.deliveries() if d.webhook_id in after]
        if arrivals:
            failover.deliveries_resumed_s = round(min(arrivals) - killed_wall, 2)
        else:
            self.report.failures.append(f"no delivery of a notification accepted after the {name} failover")


def _span(answers: list[Answer]) -> float:
    if not answers:
        return 0.0
    return round(max(a.ended for a in answers) - min(a.started for a in answers), 2)
