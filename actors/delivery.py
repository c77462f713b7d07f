"""The delivery actor: claim the job in the ledger, deliver it through its channel, record the outcome."""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple, TypeVar

import dramatiq
from dramatiq.middleware import TimeLimitExceeded
from sqlalchemy import Connection

from actors import metrics, observe
from actors.backoff import Verdict, decide
from actors.batching import Batcher
from actors.broker import BrokerUnavailable, Dispatcher, parse_redis_message_id
from actors.callbacks import ArmedSender, CallbackClaim, CallbackSucceeded, write_batch
from actors.channels.base import (
    Channel,
    DeliveryError,
    Notification,
    PermanentError,
    PermanentSetupError,
    SetupError,
    TransientError,
)
from actors.claims_coming import ClaimsComing
from actors.flow import Admission, throttling
from actors.flow.control import Deferred, FlowControl, Released
from actors.settings import Settings
from ledger import claims, queries, transitions
from ledger.callbacks import ClaimedCallback
from ledger.claims import ClaimedJob
from ledger.database import Database
from ledger.errors import LedgerUnavailable
from ledger.states import WAITING, Outcome
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch

log = logging.getLogger("wjp.worker")
T = TypeVar("T")

#: Longest error text kept in the ledger; provider answers can be long.
MAX_ERROR_LENGTH = 2000
#: `last_error` of a failure of our own set-up (`SetupError`): its detail may name our relay, user or sender.
SETUP_FAILURE = (
    "The notification service could not deliver because of its own configuration; "
    "operators have the details in the worker's log."
)


def worker_name() -> str:
    """Who holds a claim, as recorded on each attempt: host and process."""
    return _worker_name(os.getpid())


@functools.cache
def _worker_name(pid: int) -> str:
    # Asked for every ledger batch; keyed by pid, since Dramatiq forks its worker processes from one parent.
    return f"{socket.gethostname()}:{pid}"


#: Longest a success waits for a claim on its way to share a statement with (at most this much later in the ledger).
SUCCESS_LINGER = 0.005
#: Milliseconds before a message ahead of the ledger is looked at again: a transaction that sent it commits sooner.
AHEAD_RECHECK_MS = 250
#: Looks after which a message still ahead is dropped: the transaction that sent it rolled back, and the job is the
#: reconciler's again.
AHEAD_RECHECKS = 20


class _Claim(NamedTuple):
    """A message that is to claim its job's attempt; with a destination, admitted by the gate first."""

    job_id: uuid.UUID
    seq: int
    destination: str = ""
    rid: str = ""


class _Delivered(NamedTuple):
    """A successful attempt whose outcome is yet to be written."""

    job: ClaimedJob
    claimed_at: datetime
    elapsed_ms: float


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
        # Claims and successes are the two writes of every job: the process's threads share statements of them, and
        # a success waits a moment for a claim on its way to share its statement (and commit) with. A thread waits
        # for its claim, but not for its success to be written: it takes its next message meanwhile.
        self.claims_coming = ClaimsComing()
        self.ledger: Batcher[_Request, _Result] = Batcher(
            self._write_batch, "wjp-ledger", linger=SUCCESS_LINGER, coming=self.claims_coming
        )
        self.armed = ArmedSender(dispatcher, clock)  # the status callbacks of finished jobs
        self.flow: FlowControl | None = None
        if settings.flow.enabled:
            self.flow = FlowControl(
                database=database, dispatcher=dispatcher, settings=settings, threads=threads, post=self.ledger.post,
                clock=clock, rand=rand,
            )  # fmt: skip

    def _write_batch(self, requests: list[_Request]) -> list[_Result | BaseException]:
        admissions: dict[int, Admission] = {}
        if self.flow is not None:
            asking = [(n, r.destination, r.rid) for n, r in enumerate(requests)
                      if isinstance(r, _Claim | CallbackClaim) and r.destination]  # fmt: skip
            admissions = self.flow.admit(asking, requests)
        granted = [r for n, r in enumerate(requests) if admissions.get(n, _GRANTED).granted]
        delivered = [r for r in requests if isinstance(r, _Delivered)]
        dispatches = [(r.job_id, r.seq) for r in granted if isinstance(r, _Claim)]
        attempts = [(item.job.id, item.job.attempt) for item in delivered]
        now = self.clock()
        # Status callbacks' claims and successes: a statement of their own in the same batch.
        callbacks_done, callbacks_claimed = write_batch(
            self.database, [r for r in granted if isinstance(r, CallbackClaim)],
            [r for r in requests if isinstance(r, CallbackSucceeded)], now=now,
        )  # fmt: skip
        done, claimed = self._write_jobs(attempts, dispatches, delivered, now=now)
        return self._answers(requests, admissions, {_Claim: iter(claimed), CallbackClaim: iter(callbacks_claimed)},
                             {_Delivered: iter(done), CallbackSucceeded: iter(callbacks_done)})  # fmt: skip

    def _write_jobs(
        self, attempts: list[tuple[uuid.UUID, int]], dispatches: list[tuple[uuid.UUID, int]],
        delivered: list[_Delivered], *, now: datetime,
    ) -> tuple[list[bool], Sequence[ClaimedJob | BaseException | None]]:  # fmt: skip
        if not attempts and not dispatches:
            return [], []
        # Drawn once, outside the retried statement: a retry finds the claims it committed. The claims are stamped
        # with the database's clock, by which the reconciler expires them, whatever this host's clock says.
        token = uuid.uuid4()
        claimed: Sequence[ClaimedJob | BaseException | None]
        try:
            done, claimed = self.database.run(
                lambda conn: claims.succeed_and_claim(
                    conn, attempts, dispatches, now=now, worker=worker_name(), token=token, database_clock=True
                ),
                kept=True,
            )
        except LedgerUnavailable as exc:
            # The claims hear of it at once (their messages come back later), giving back below what their
            # admissions took; the successes ride it out.
            claimed = [exc] * len(dispatches)
            done = self._write_successes(attempts, delivered, now=now) if delivered else []
        except Exception:
            # One request the database refuses fails the statement it shares: each goes on its own, so that only it
            # fails, and no success is dropped (to be delivered again once its claim expires).
            log.exception("a ledger batch failed; writing its %d jobs' requests one by one", len(attempts + dispatches))
            done = self._write_successes(attempts, delivered, now=now) if delivered else []
            claimed = [self._claim_alone(dispatch, now=now) for dispatch in dispatches]
        for (job, _, elapsed_ms), succeeded in zip(delivered, done, strict=True):
            if succeeded:
                log.info("✅ Job %s success (%s, attempt %d, %.0f ms)", job.id, job.channel, job.attempt, elapsed_ms,
                         extra={"job_id": job.id, "attempt": job.attempt})  # fmt: skip
            else:
                _log_taken_back(job)
        self.armed.post([job for (job, *_), ok in zip(delivered, done, strict=True) if ok and job.callback_url])
        return done, claimed

    def _answers(
        self, requests: list[_Request], admissions: dict[int, Admission], claims: dict[type, Iterator[object]],
        successes: dict[type, Iterator[bool]],
    ) -> list[_Result | BaseException]:  # fmt: skip
        """Each request's answer, in order, from the answers of its kind (`claims`, `successes`, by type); an
        admitted claim that did not claim gives its admission back."""
        results: list[_Result | BaseException] = []
        for n, request in enumerate(requests):
            kind = type(request)
            if kind in successes:
                results.append(next(successes[kind]))
            elif kind not in claims:
                results.append(None)
            elif not admissions.get(n, _GRANTED).granted:
                results.append(admissions[n])
            else:
                result = next(claims[kind])
                if n in admissions and not isinstance(result, ClaimedJob | ClaimedCallback):
                    self.flow.unclaimed(request.destination, request.rid)  # type: ignore[union-attr]
                results.append(result)  # type: ignore[arg-type]
        return results

    def _claim_alone(self, dispatch: tuple[uuid.UUID, int], *, now: datetime) -> ClaimedJob | BaseException | None:
        # A token of its own: under the batch's, a second request for the same dispatch would take the first's
        # claim for its own and deliver the attempt again.
        token = uuid.uuid4()
        try:
            return self.database.run(
                lambda conn: claims.claim_many(
                    conn, [dispatch], now=now, worker=worker_name(), token=token, database_clock=True
                )[0],
                kept=True,
            )
        except Exception as exc:  # raised in the claiming thread alone
            return exc

    def _write_successes(
        self, attempts: list[tuple[uuid.UUID, int]], delivered: list[_Delivered], *, now: datetime
    ) -> list[bool]:
        try:
            return self._write(
                lambda conn: claims.succeed_many(conn, attempts, now=now),
                claimed_at=max(item.claimed_at for item in delivered),
                kept=True,
            )
        except LedgerUnavailable as exc:
            for item in delivered:
                log.error(
                    "Job %s: could not record the success of attempt %d (%s); the reconciler will take the claim "
                    "back and attempt it again",
                    item.job.id,
                    item.job.attempt,
                    exc,
                )
            return [False] * len(delivered)

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the successes not yet written and their callbacks sent; whether done."""
        return self.ledger.flush(timeout) and self.armed.flush(timeout)

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
            job = self.ledger.submit(_Claim(message_job_id, seq, destination if flow else "", rid))
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
                rand=self.rand, write=functools.partial(self._write, claimed_at=started),
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
            # Written by the batcher (`_write_batch`), which rides out a ledger outage as `_write` does; until then
            # the job is PROCESSING in this worker's claim, as if the delivery were still running.
            self.ledger.post(_Delivered(job, started, (now - started).total_seconds() * 1000))
            return
        text = _error_text(error)
        if decision.verdict is Verdict.RETRY:
            assert decision.due_at is not None
            due_at = decision.due_at
            if (due_at - now).total_seconds() > self.settings.schedule_horizon:
                # Far off: parked in the ledger, which a reconciler pass sends as it comes due, rather than in the
                # delay queue, where what is due soon would wait behind it (read in FIFO order).
                done = self._write(
                    lambda conn: transitions.park_retry(conn, job.id, job.attempt, now=now, due_at=due_at, error=text),
                    claimed_at=started,
                )
                dispatch = None
            else:
                dispatch = self._write(
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
            done = self._write(
                lambda conn: transitions.fail(conn, job.id, job.attempt, now=now, outcome=outcome, error=text),
                claimed_at=started,
            )
            if done:
                log.warning("⚠️ Job %s marked as FAILED after attempt %d: %s", job.id, job.attempt, text)
                self.armed.post([job] if job.callback_url else [])
        if not done:
            _log_taken_back(job)

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

    def _write(self, statement: Callable[[Connection], T], *, claimed_at: datetime, kept: bool = False) -> T:
        """Record an outcome (`statement`, run by `Database.run`), riding out a ledger outage for as long as the
        attempt may last (inside its claim): the delivery has happened, and losing its result would mean delivering
        it again once the reconciler takes the claim back, which it cannot do any sooner."""
        limit = claimed_at + timedelta(seconds=self.settings.attempt_time_limit)
        deadline = time.monotonic() + (limit - self.clock()).total_seconds()
        pause = 0.2
        while True:
            try:
                return self.database.run(statement, kept=kept)
            except LedgerUnavailable:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                pause = min(pause, remaining)
                log.warning("ledger unavailable while recording an outcome; trying again in %.1fs", pause)
                time.sleep(pause)
                pause = min(pause * 2, 5.0)


_Request = _Claim | _Delivered | CallbackClaim | CallbackSucceeded | Released | Deferred
#: A claim's answer: the job or callback claimed, None (not claimed) or the gate's deferral; a success's: whether it
#: was written.
_Result = ClaimedJob | ClaimedCallback | Admission | bool | None
_GRANTED = Admission(granted=True)


def _log_taken_back(job: ClaimedJob) -> None:
    log.warning("Job %s: attempt %d was taken back meanwhile; its result is dropped", job.id, job.attempt)


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
