"""The reconciler: compares the ledger with Redis and puts right whatever a crash or Redis lost."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import redis

from actors import metrics
from actors.broker import BrokerUnavailable, Dispatcher
from actors.callback_reconciler import CallbackReconciler
from actors.flow import Gate, Limits, QueueKeys
from actors.flow.control import effective_limits
from actors.settings import FlowSettings
from ledger import destinations, maintenance, transitions
from ledger.database import Database
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch

#: What expiring claims came to: the dispatches sent for the jobs to retry, and the jobs that failed.
Expired = tuple[list[Dispatch], list[uuid.UUID]]

log = logging.getLogger("wjp.reconciler")

#: Rows read and changed per statement: bounds a pass's memory and each statement's locks.
BATCH_SIZE = 500


@dataclass
class PassReport:
    expired: int = 0
    failed: int = 0
    redispatched: int = 0
    checked: int = 0
    duration_ms: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class Reconciler:
    """One pass (`run_once`) or a loop of them. Overlapping passes are safe: every change is guarded on
    the state it read, so of two passes at most one expires or re-dispatches a given job, and its messages are
    sent before its transaction commits, so the other never finds them missing."""

    def __init__(
        self,
        *,
        database: Database,
        dispatcher: Dispatcher,
        visibility_timeout: float,
        grace: float,
        schedule_horizon: float,
        clock: Callable[[], datetime] = utcnow,
        batch_size: int = BATCH_SIZE,
        flow: FlowSettings | None = None,
        max_attempts: int = 5,
    ) -> None:
        self.database = database
        self.dispatcher = dispatcher
        self.visibility_timeout = timedelta(seconds=visibility_timeout)
        self.grace = timedelta(seconds=grace)
        self.schedule_horizon = timedelta(seconds=schedule_horizon)
        self.clock = clock
        self.batch_size = batch_size
        self.flow = FlowSettings() if flow is None else flow
        # `max_attempts`: of a callback whose claims keep expiring (WJP_MAX_ATTEMPTS, as for its attempts' failures).
        self.callbacks = CallbackReconciler(
            database=database, dispatcher=dispatcher, visibility_timeout=visibility_timeout, grace=grace,
            schedule_horizon=schedule_horizon, max_attempts=max_attempts, batch_size=batch_size, clock=clock,
        )  # fmt: skip

    def run_once(self) -> PassReport:
        """Raise `LedgerUnavailable` or `BrokerUnavailable` when either cannot be reached."""
        started = time.perf_counter()
        report = PassReport()
        self.dispatcher.requeue_abandoned()
        self._expire_claims(report)
        if self.flow.enabled:
            self._give_up_deferred(report)
        self._redispatch_missing(report)
        # After the jobs: the callbacks this pass armed (claims expired to FAILED, deferrals given up) go out now.
        callbacks = self.callbacks.run_once()
        report.expired += callbacks.expired
        report.failed += callbacks.failed
        report.redispatched += callbacks.redispatched
        report.checked += callbacks.checked
        if self.flow.enabled:
            self._wake_waiting()
        report.duration_ms = round((time.perf_counter() - started) * 1000)
        metrics.observe_pass(expired=report.expired, failed=report.failed, redispatched=report.redispatched)
        return report

    def _expire_claims(self, report: PassReport) -> None:
        # The database's clock stamped the claims; a cutoff from this host's clock would expire them early or late.
        now = self.database.run(maintenance.database_time)
        cutoff = now - self.visibility_timeout
        error = f"visibility timeout exceeded: no result within {self.visibility_timeout.total_seconds():g}s"
        while True:
            claims = self.database.run(
                lambda conn: maintenance.expired_claims(conn, cutoff=cutoff, limit=self.batch_size)
            )
            report.checked += len(claims)
            if not claims:
                return

            def expire_and_send(conn, claims: list[tuple[uuid.UUID, int]] = claims) -> Expired:
                dispatches, failed = transitions.expire(conn, claims, now=now, cutoff=cutoff, error=error)
                return self._send_before_commit(dispatches, now=now), failed

            dispatches, failed = self.database.run(expire_and_send, transaction=True)
            for job_id in failed:
                log.warning("⚠️ Job %s marked as FAILED due to timeout", job_id)
            for dispatch in dispatches:
                log.info("Job %s: claim expired; attempt re-dispatched", dispatch.job_id)
            report.expired += len(dispatches)
            report.failed += len(failed)
            if len(claims) < self.batch_size:
                return

    def _give_up_deferred(self, report: PassReport) -> None:
        """Fail the jobs deferred past WJP_MAX_DEFERRAL that no worker looks at any more (waiting on a list nobody
        wakes, parked in the ledger)."""
        now = self.clock()
        before = now - timedelta(seconds=self.flow.max_deferral)
        while True:
            overdue = self.database.run(
                lambda conn: maintenance.deferred_too_long(conn, deferred_before=before, limit=self.batch_size)
            )
            if not overdue:
                return
            failed = self.database.run(
                lambda conn, overdue=overdue: transitions.give_up_deferred(
                    conn, now=now, max_deferral=self.flow.max_deferral, job_ids=overdue
                ),
                transaction=True,
            )
            for job_id in failed:
                log.warning("⚠️ Job %s marked as FAILED: deferred for over %gs", job_id, self.flow.max_deferral)
            report.failed += len(failed)
            if len(overdue) < self.batch_size:
                return

    def _wake_waiting(self) -> None:
        """Wake waiting lists as far as their destinations have room: the leases of killed workers expire with no
        release to wake anyone."""
        gate, queue = Gate(self.dispatcher.broker.client), QueueKeys.of(self.dispatcher.queue)
        try:
            keys = gate.waiting(queue)
            if not keys:
                return
            overrides = self.database.run(destinations.overrides)
            defaults = Limits(self.flow.concurrency, self.flow.rate)
            limits = {key: effective_limits(defaults, overrides.get(key)) for key in keys}
            woken = gate.wake(limits, queue=queue)
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"Redis unreachable: {exc}") from exc
        for key, count in woken.items():
            if count:
                log.info("woke %d messages waiting on %s", count, key)

    def _redispatch_missing(self, report: PassReport) -> None:
        now = self.clock()
        after: tuple[datetime, object] | None = None
        while True:
            candidates = self.database.run(
                lambda conn, after=after: maintenance.waiting_candidates(
                    conn,
                    overdue_before=now - self.grace,
                    schedule_until=now + self.schedule_horizon,
                    after=after,
                    limit=self.batch_size,
                )
            )
            report.checked += len(candidates)
            if not candidates:
                return
            sent = [Dispatch(job_id, seq, due) for job_id, seq, due in candidates if seq > 0]
            # Never sent (a far `send_at`) or parked (a far retry): coming due within the horizon, sent now.
            unsent = [(job_id, seq) for job_id, seq, _ in candidates if seq <= 0]
            lost = [(d.job_id, d.seq) for d in self.dispatcher.missing(sent)] + unsent
            dispatches = self.database.run(
                lambda conn, lost=lost: self._send_before_commit(transitions.redispatch(conn, lost, now=now), now=now),
                transaction=True,
            )
            report.redispatched += len(dispatches)
            if len(candidates) < self.batch_size:
                return
            last = candidates[-1]
            after = (last[2], last[0])

    def _send_before_commit(self, dispatches: list[Dispatch], *, now: datetime) -> list[Dispatch]:
        """Send `dispatches` while the transaction that made them still holds their rows.

        Never after the commit: a concurrent pass reading the rows in between found the new dispatches missing from
        Redis and sent them again. Before it, a pass that read the rows earlier waits on them and then finds them
        changed, and one that reads them later finds their messages. A failed send rolls the transaction back,
        leaving the rows to the next pass."""
        self.dispatcher.send(dispatches, now=now)
        return dispatches

    def run_forever(self, interval: float, stop: threading.Event, report: Callable[[PassReport], None]) -> None:
        """Run a pass every `interval` seconds until `stop` is set; an unreachable ledger or Redis is
        logged and tried again at the next pass."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                report(self.run_once())
            except Exception as exc:
                log.error("reconcile pass failed: %s", exc)
            stop.wait(max(0.0, interval - (time.monotonic() - started)))
