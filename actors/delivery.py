"""The delivery actor: claim the job in the ledger, deliver it through its channel, record the outcome."""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime

import dramatiq
from dramatiq.middleware import TimeLimitExceeded

from actors import metrics, observe
from actors.backoff import Verdict, decide
from actors.batching import Batcher
from actors.broker import BrokerUnavailable, Dispatcher, parse_redis_message_id
from actors.callbacks import ArmedSender
from actors.channels.base import (
    Channel,
    DeliveryError,
    Notification,
    PermanentError,
    PermanentSetupError,
    SetupError,
    TransientError,
)
from actors.flow import Admission, throttling
from actors.flow.control import FlowControl
from actors.ledger_batch import Delivered, JobClaim, LedgerBatch, Request, Result, log_taken_back
from actors.settings import Settings
from ledger import queries, transitions
from ledger.claims import ClaimedJob
from ledger.database import Database
from ledger.states import WAITING, Outcome
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch

log = logging.getLogger("wjp.worker")

#: Longest error text kept in the ledger; provider answers can be long.
MAX_ERROR_LENGTH = 2000
#: `last_error` of a failure of our own set-up (`SetupError`): its detail may name our relay, user or sender.
SETUP_FAILURE = (
    "The notification service could not deliver because of its own configuration; "
    "operators have the details in the worker's log."
)
#: Milliseconds before a message ahead of the ledger is looked at again: a transaction that sent it commits sooner.
AHEAD_RECHECK_MS = 250
#: Looks after which a message still ahead is dropped: the transaction that sent it rolled back, and the job is the
#: reconciler's again.
AHEAD_RECHECKS = 20


class Delivery:
    """Runs one delivery attempt for a message. Shared by all worker threads of a process."""

    def __init__(
        self,
        *,
        database: Database,
        dispatcher: Dispatcher,
        channels: dict[str, Channel],
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
        rand: Callable[[], float] = random.random,
        threads: int = 8,
    ) -> None:
        self.database = database
        self.dispatcher = dispatcher
        self.channels = channels
        self.settings = settings
        self.clock = clock
        self.rand = rand
        self.armed = ArmedSender(dispatcher, clock)  # the status callbacks of finished jobs
        self.batch = LedgerBatch(database=database, settings=settings, armed=self.armed, clock=clock)
        self.claims_coming = self.batch.claims_coming
        #: The process's ledger batcher: claims and successes of jobs and status callbacks, and gate releases.
        self.ledger: Batcher[Request, Result] = self.batch.batcher
        self.flow: FlowControl | None = None
        if settings.flow.enabled:
            self.flow = FlowControl(
                database=database, dispatcher=dispatcher, settings=settings, threads=threads, post=self.ledger.post,
                clock=clock, rand=rand,
            )  # fmt: skip
        self.batch.flow = self.flow

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the successes and deferrals not yet written and the callbacks not yet
        sent; whether done."""
        deferrals = self.flow is None or self.flow.deferrals.flush(timeout)
        return self.ledger.flush(timeout) and self.armed.flush(timeout) and deferrals

    def close_channels(self) -> None:
        """Let every channel close what it keeps between deliveries (SMTP sessions say QUIT)."""
        for channel in self.channels.values():
            try:
                channel.close()
            except Exception:
                log.warning("channel %s did not close cleanly", channel.name, exc_info=True)

    def __call__(self, job_id: str, rid: str, destination: str = "") -> None:
        try:
            message_job_id, seq = parse_redis_message_id(rid)
        except ValueError:
            log.error("dropping a message with a malformed id %r (job %s)", rid, job_id)
            return
        flow = self.flow if destination else None
        # Taken before the claim is written, so the attempt's deadline falls inside the claim the ledger records
        # (the reconciler takes it back only a visibility timeout after that).
        deadline = time.monotonic() + self.settings.attempt_time_limit
        claimed_at = self.clock()
        dispatch = Dispatch(message_job_id, seq, claimed_at, destination)
        self.claims_coming.claimed()
        with observe.claiming(message_job_id):
            job = self.ledger.submit(JobClaim(message_job_id, seq, destination if flow else "", rid))
        if isinstance(job, Admission):
            flow.defer(dispatch, job)  # type: ignore[union-attr]
            return
        if job is None:
            self._handle_unclaimed(dispatch)
            return
        started = time.perf_counter()
        error = observe.attempt(self._attempt, job, deadline, destination)
        metrics.observe_attempt(job.channel, error, time.perf_counter() - started)
        if flow is not None:
            flow.finished(destination, rid, error)
        self._record(job, error, started=claimed_at)

    def _attempt(self, job: ClaimedJob, deadline: float) -> DeliveryError | None:
        channel = self.channels.get(job.channel)
        if channel is None:
            return PermanentSetupError(f"channel {job.channel!r} is not enabled on this worker")
        notification = Notification(
            job.id, job.recipient, job.message, job.subject, job.metadata, job.attempt, deadline=deadline
        )
        try:
            channel.deliver(notification)
        except DeliveryError as exc:
            return exc
        except TimeLimitExceeded:
            return TransientError(f"attempt exceeded the time limit of {self.settings.attempt_time_limit:g}s")
        except Exception as exc:
            # A channel bug must not lose the job: count it as a failed attempt and keep the trace.
            log.exception("channel %s raised unexpectedly for job %s", job.channel, job.id)
            return TransientError(f"{type(exc).__name__}: {exc}")
        return None

    def _record(self, job: ClaimedJob, error: DeliveryError | None, *, started: datetime) -> None:
        now = self.clock()
        if isinstance(error, TransientError) and error.throttled:
            given_back = throttling.give_back(
                job, error, _error_text(error), now=now, settings=self.settings,
                rand=self.rand, write=functools.partial(self.batch.record, claimed_at=started),
            )  # fmt: skip
            if isinstance(given_back, Dispatch):
                self._send(given_back)
            if given_back is not None:
                return
        decision = decide(
            attempt=job.attempt, max_attempts=job.max_attempts, failed=error is not None,
            permanent=isinstance(error, PermanentError), retry_after=getattr(error, "retry_after", None),
            policy=self.settings.backoff, now=now, rand=self.rand,
        )  # fmt: skip
        if decision.verdict is Verdict.SUCCEED:
            # Written by the batcher (`LedgerBatch.write`), which rides out a ledger outage as `record` does; until then
            # the job is PROCESSING in this worker's claim, as if the delivery were still running.
            self.ledger.post(Delivered(job, started, (now - started).total_seconds() * 1000))
            return
        text = _error_text(error)
        if decision.verdict is Verdict.RETRY:
            assert decision.due_at is not None
            due_at = decision.due_at
            if (due_at - now).total_seconds() > self.settings.schedule_horizon:
                # Far off: parked in the ledger, which a reconciler pass sends as it comes due, rather than in the
                # delay queue, where what is due soon would wait behind it (read in FIFO order).
                done = self.batch.record(
                    lambda conn: transitions.park_retry(conn, job.id, job.attempt, now=now, due_at=due_at, error=text),
                    claimed_at=started,
                )
                dispatch = None
            else:
                dispatch = self.batch.record(
                    lambda conn: transitions.schedule_retry(
                        conn, job.id, job.attempt, now=now, due_at=due_at, error=text
                    ),
                    claimed_at=started,
                )
                done = dispatch is not None
            if done:
                log.info("🔁 Job %s retry in %.1fs (attempt %d: %s)", job.id, decision.delay, job.attempt, text)
            if dispatch is not None:
                self._send(dispatch)
        else:
            outcome = Outcome.PERMANENT_ERROR if isinstance(error, PermanentError) else Outcome.TRANSIENT_ERROR
            done = self.batch.record(
                lambda conn: transitions.fail(conn, job.id, job.attempt, now=now, outcome=outcome, error=text),
                claimed_at=started,
            )
            if done:
                log.warning("⚠️ Job %s marked as FAILED after attempt %d: %s", job.id, job.attempt, text)
                self.armed.post([job] if job.callback_url else [])
        if not done:
            log_taken_back(job)

    def _handle_unclaimed(self, dispatch: Dispatch) -> None:
        """A message that did not claim is dropped, unless it is the job's current one and merely early, or one
        newer than the ledger has committed yet."""
        state = self.database.run(lambda conn: queries.dispatch_state(conn, dispatch.job_id))
        if state is not None and dispatch.seq > abs(state.dispatch_seq):
            # Sent by a transaction that has not committed yet (a reconciler pass sends first): its claim takes once
            # it has. Back to the delay queue for a moment; `actors.actor` bounds how often, for one that rolled back.
            raise SequenceAhead(f"dispatch {dispatch.seq} of job {dispatch.job_id} is not committed yet")
        if state is None or state.status not in WAITING or state.dispatch_seq != dispatch.seq:
            log.debug("dropping stale message %s.%s", dispatch.job_id, dispatch.seq)
            return
        # Early (the sender's clock runs ahead): wait in the delay queue for the rest of the time.
        self._send(Dispatch(dispatch.job_id, dispatch.seq, state.next_attempt_at, dispatch.destination))

    def _send(self, dispatch: Dispatch) -> None:
        try:
            self.dispatcher.send([dispatch], now=self.clock())
        except BrokerUnavailable as exc:
            # The ledger already says RETRY and when; a reconciler pass sends it once Redis is back.
            log.warning("Job %s: could not enqueue its next attempt (%s); the reconciler will", dispatch.job_id, exc)

def _error_text(error: DeliveryError | None) -> str:
    """What producers read in `last_error`: the receiver's answer, never the detail of our own set-up."""
    if error is None:
        return ""
    if isinstance(error, SetupError):
        log.warning("delivery failed on this worker's own set-up: %s", error)
        return SETUP_FAILURE
    text = str(error) or type(error).__name__
    return text[:MAX_ERROR_LENGTH]


class SequenceAhead(dramatiq.Retry):
    """A message whose dispatch the ledger has not committed yet: looked at again shortly (a `Retry`, which
    Dramatiq does not log as an error)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, delay=AHEAD_RECHECK_MS)
