"""The reconciler's pass over status callbacks: claims whose worker vanished are taken back, and callbacks whose
message was never sent, was lost with Redis or waits parked are (re-)dispatched, as the pass does for jobs."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from actors.broker import Dispatcher
from actors.callbacks import CALLBACK_MESSAGES
from ledger import callback_recovery
from ledger.callbacks import ARMED_SEQ
from ledger.database import Database
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch

log = logging.getLogger("wjp.reconciler")


@dataclass
class CallbackPass:
    expired: int = 0
    failed: int = 0
    redispatched: int = 0
    checked: int = 0


class CallbackReconciler:
    """One pass (`run_once`); safe to overlap with another, since every change is guarded on the seq it read. Its
    messages are sent after commit, so none can arrive before its claim would take: a pass that meanwhile finds one
    missing sends a newer dispatch, and the older message is then dropped at its claim (never delivered twice)."""

    def __init__(
        self,
        *,
        database: Database,
        dispatcher: Dispatcher,
        visibility_timeout: float,
        grace: float,
        schedule_horizon: float,
        max_attempts: int,
        batch_size: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.dispatcher = dispatcher
        self.visibility_timeout = timedelta(seconds=visibility_timeout)
        self.grace = timedelta(seconds=grace)
        self.schedule_horizon = timedelta(seconds=schedule_horizon)
        self.max_attempts = max_attempts
        self.batch_size = batch_size
        self.clock = clock

    def run_once(self) -> CallbackPass:
        report = CallbackPass()
        self._expire_claims(report)
        self._redispatch_missing(report)
        return report

    def _expire_claims(self, report: CallbackPass) -> None:
        # Callback claims are stamped by the workers' clocks (`CallbackDelivery`), so the cutoff is read from this
        # host's.
        now = self.clock()
        cutoff = now - self.visibility_timeout
        error = f"visibility timeout exceeded: no result within {self.visibility_timeout.total_seconds():g}s"
        while True:
            dispatches, failed = self.database.run(
                lambda conn: callback_recovery.expire(
                    conn, now=now, cutoff=cutoff, max_attempts=self.max_attempts, error=error, limit=self.batch_size
                ),
                transaction=True,
            )
            if dispatches:
                self.dispatcher.send(dispatches, now=now, kind=CALLBACK_MESSAGES)
            for dispatch in dispatches:
                log.info("Job %s: callback claim expired; re-dispatched", dispatch.job_id)
            report.expired += len(dispatches)
            report.failed += failed
            report.checked += len(dispatches) + failed
            if len(dispatches) + failed < self.batch_size:
                return

    def _redispatch_missing(self, report: CallbackPass) -> None:
        now = self.clock()
        after: tuple[datetime, uuid.UUID] | None = None
        while True:
            candidates = self.database.run(
                lambda conn, after=after: callback_recovery.waiting_candidates(
                    conn,
                    overdue_before=now - self.grace,
                    schedule_until=now + self.schedule_horizon,
                    limit=self.batch_size,
                    after=after,
                )
            )
            report.checked += len(candidates)
            if not candidates:
                return
            sent = [Dispatch(job_id, seq, due) for job_id, seq, due in candidates if seq > 0]
            unsent = [(job_id, seq) for job_id, seq, _ in candidates if seq <= 0]
            missing = self.dispatcher.missing(sent, CALLBACK_MESSAGES)
            # A callback armed for the worker that finished its job goes by a message naming the armed dispatch
            # (`ARMED_SEQ`): that one counts too. (Left behind by a callback claimed through a newer message, it only
            # delays that callback's next dispatch until it is consumed and dropped as stale.)
            armed = [msgspec.structs.replace(d, seq=ARMED_SEQ) for d in missing]
            gone = {d.job_id for d in self.dispatcher.missing(armed, CALLBACK_MESSAGES)}
            lost = [(d.job_id, d.seq) for d in missing if d.job_id in gone] + unsent
            dispatches = self.database.run(lambda conn, lost=lost: callback_recovery.redispatch(conn, lost, now=now))
            if dispatches:
                self.dispatcher.send(dispatches, now=now, kind=CALLBACK_MESSAGES)
            report.redispatched += len(dispatches)
            if len(candidates) < self.batch_size:
                return
            last = candidates[-1]
            after = (last[2], last[0])
