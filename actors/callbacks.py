"""Status callbacks: a finished job's status POSTed to its `callback_url` as a signed Standard Webhooks event, by the
worker that finished the job (`ArmedSender`) and, for retries and for what no worker sent, by the actor of their
messages. The ledger arms a callback as its job finishes (`ledger.callbacks`); a reconciler pass sends what was never
sent or lost (`actors.callback_reconciler`)."""

from __future__ import annotations

import functools
import logging
import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, TimeLimitExceeded

from actors.backoff import Verdict, decide
from actors.batching import Batcher
from actors.broker import DEST_OPTION, RID_OPTION, BrokerUnavailable, Dispatcher, MessageKind, parse_redis_message_id
from actors.callback_sender import SENDERS, ArmedSender
from actors.channels.base import DeliveryError, PermanentError, TransientError
from actors.channels.webhook import WebhookChannel, webhook_destination
from actors.flow import Admission, Reason
from actors.flow.control import RELEASE_RIDES, FlowControl
from actors.settings import Settings
from ledger import callbacks, claims
from ledger.callbacks import ARMED_ATTEMPT, ARMED_SEQ, ClaimedCallback
from ledger.claims import ClaimedJob, Finished
from ledger.database import Database
from ledger.errors import LedgerUnavailable
from ledger.queries import job_document
from ledger.states import Status
from ledger.timestamps import rfc3339, utcnow
from ledger.transitions import Dispatch

log = logging.getLogger("wjp.callbacks")

#: The callback actor's name; its messages share the delivery actor's queue.
CALLBACK_ACTOR = "deliver_callback"
#: The event `type` of each status a callback reports.
EVENT_TYPES = {
    Status.SUCCESS: "notification.succeeded",
    Status.FAILED: "notification.failed",
    Status.CANCELLED: "notification.cancelled",
}
#: Longest error text kept on a callback.
MAX_ERROR_LENGTH = 2000
#: Most seconds a delivered callback's success, armed claimed for its worker, waits to ride a ledger batch someone
#: waits for: as long as a release does (`flow.control.RELEASE_RIDES`).
OUTCOME_RIDES = RELEASE_RIDES
_INFIX = ".callback."


def callback_message_id(dispatch: Dispatch) -> str:
    """The Redis id of a callback's message: apart from its job's own messages, which share the queue."""
    return f"{dispatch.job_id}{_INFIX}{dispatch.seq}"


def parse_callback_message_id(rid: str) -> tuple[uuid.UUID, int]:
    """Split what `callback_message_id` writes (the seq `ARMED_SEQ` included); ValueError for anything else."""
    job_id, infix, seq = rid.partition(_INFIX)
    if not infix:
        raise ValueError(f"not the Redis id of a callback: {rid!r}")
    if seq == str(ARMED_SEQ):
        return parse_redis_message_id(f"{job_id}.1")[0], ARMED_SEQ
    return parse_redis_message_id(f"{job_id}.{seq}")


CALLBACK_MESSAGES = MessageKind(CALLBACK_ACTOR, callback_message_id)


def event(claimed: ClaimedCallback, *, now: datetime) -> dict[str, Any]:
    """The body a callback POSTs: the status it reports, when, and the job as its GET shows it."""
    return {"type": EVENT_TYPES[claimed.event], "timestamp": rfc3339(now), "data": job_document(claimed.job)}


def send_armed(database: Database, dispatcher: Dispatcher, job_ids: list[uuid.UUID], *, now: datetime) -> None:
    """Send the first message of the callbacks armed unsent as `job_ids` finished without a worker (a cancellation),
    after the commit that finished them. Best effort: a reconciler pass sends whatever this misses."""
    if not job_ids:
        return
    try:
        dispatches = database.run(lambda conn: callbacks.dispatch_armed(conn, job_ids, now=now))
        dispatcher.send(dispatches, now=now, kind=CALLBACK_MESSAGES)
    except (LedgerUnavailable, BrokerUnavailable) as exc:
        log.warning("could not send %d status callbacks (%s); the reconciler will", len(job_ids), exc)


class CallbackClaim(NamedTuple):
    """A callback message that is to claim its attempt, in the worker's ledger batch (`Delivery.ledger`); with a
    destination, admitted by the gate first, in the batch's one round trip."""

    job_id: uuid.UUID
    seq: int
    destination: str = ""
    rid: str = ""


class CallbackAdmissions(NamedTuple):
    """Callbacks armed claimed for this worker, `(destination, lease id)` each, to be admitted by the gate before
    their POST, in the worker's ledger batch's round trip; answered with an `Admission` each."""

    asking: list[tuple[str, str]]


class CallbackSucceeded(NamedTuple):
    """A callback delivered, whose success is yet to be written, in the worker's ledger batch."""

    claimed: ClaimedCallback


def write_batch(
    database: Database, claims: list[CallbackClaim], successes: list[CallbackSucceeded], *, now: datetime
) -> tuple[list[bool], list[ClaimedCallback | BaseException | None]]:
    """The callbacks' part of a worker's ledger batch, in one statement: which successes took, and each claim's
    answer (the callback claimed, None when stale, or the error to raise in its thread). A success that cannot be
    written is delivered again once the reconciler takes its claim back (at least once)."""
    if not claims and not successes:
        return [], []
    attempts = [(s.claimed.job.id, s.claimed.attempt) for s in successes]
    dispatches = [(c.job_id, c.seq) for c in claims]
    postgresql = database.dialect == "postgresql"
    try:
        # SQLite reads the claimed jobs in a second statement: in the claims' transaction.
        done, claimed = database.run(
            lambda conn: callbacks.succeed_and_claim(conn, attempts, dispatches, now=now),
            kept=postgresql,
            transaction=not postgresql,
        )
    except Exception as exc:  # answered to each claim's thread; the successes are the reconciler's
        if not isinstance(exc, LedgerUnavailable):
            log.exception("a batch of %d status callbacks failed", len(claims) + len(successes))
        return not_recorded(successes, exc), [exc] * len(claims)
    log_recorded(successes, done)
    return done, claimed


def log_recorded(successes: list[CallbackSucceeded], done: list[bool]) -> None:
    """One line for the callbacks of a ledger batch whose delivery was written (a line per callback cost the worker
    as much as the statement that wrote them: bench/README.md, 2026-12-04 13:40), one per callback taken back."""
    written = [s.claimed for s, ok in zip(successes, done, strict=True) if ok]
    if written:
        log.info("📣 %s", ", ".join(f"Job {c.job.id}: {c.event.value} callback delivered (attempt {c.attempt})"
                                    for c in written))  # fmt: skip
    for success, ok in zip(successes, done, strict=True):
        if not ok:
            log.warning("Job %s: callback attempt %d was taken back meanwhile; its result is dropped",
                        success.claimed.job.id, success.claimed.attempt)  # fmt: skip


def not_recorded(successes: list[CallbackSucceeded], error: BaseException) -> list[bool]:
    """Successes a ledger batch could not write: delivered again once the reconciler takes their claims back."""
    for success in successes:
        log.error("Job %s: could not record its delivered callback (%s); it will be sent again", success.claimed.job.id,
                  error)  # fmt: skip
    return [False] * len(successes)


class CallbackDelivery:
    """Runs one attempt of a callback for a message: admitted by its destination's flow control like a webhook,
    claimed in the ledger, POSTed through the webhook channel (its guard, signing and timeouts), and recorded. A
    callback's outcome is its own: the job's status never changes here."""

    def __init__(
        self,
        *,
        database: Database,
        dispatcher: Dispatcher,
        webhook: WebhookChannel,
        settings: Settings,
        flow: FlowControl | None,
        ledger: Batcher[Any, Any],
        armed: ArmedSender | None = None,
        clock: Callable[[], datetime] = utcnow,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.database = database
        self.dispatcher = dispatcher
        self.webhook = webhook
        self.settings = settings
        self.flow = flow
        # The worker's ledger batcher (`Delivery.ledger`): claims, successes and admissions share its statements and
        # its gate round trips with other callbacks' and jobs', as jobs' do.
        self.ledger = ledger
        self.clock = clock
        self.rand = rand
        if armed is not None:  # the process's sender of the callbacks armed claimed for it delivers through this
            # As many senders as one destination may hold threads of this process: a group admitted together fits.
            armed.attach(self, flow.shares.share if flow is not None else SENDERS)

    def __call__(self, rid: str, destination: str) -> None:
        try:
            job_id, seq = parse_callback_message_id(rid)
        except ValueError:
            log.error("dropping a callback message with a malformed id %r", rid)
            return
        flow = self.flow if destination else None
        deadline = time.monotonic() + self.settings.attempt_time_limit
        claimed = self.ledger.submit(CallbackClaim(job_id, seq, destination if flow else "", rid))
        if isinstance(claimed, Admission):
            self._defer(Dispatch(job_id, seq, self.clock(), destination), claimed)
            return
        if claimed is None:
            # Stale (a newer dispatch, the job retried by an operator, already done): a waiting callback whose
            # message this was is sent again by a reconciler pass. Its admission went back in the batch.
            log.debug("dropping stale callback message %s", rid)
            return
        error = self._attempt(claimed, deadline)
        if flow is not None:
            flow.finished(destination, rid, error)
        self._record(claimed, error)

    def admit_claimed(self, group: list[tuple[ClaimedJob, Finished | None]]) -> list[Callable[[], None]]:
        """The callbacks the ledger armed claimed for this worker as it finished these jobs (migration 0010), with
        what their success returned: admitted together in one request of the ledger batch, and for each what a sender
        is to do: POST it, or give its claim back to a message (deferred by its destination, or no `Finished`)."""
        tasks: list[Callable[[], None]] = []
        asking: list[tuple[str, str]] = []
        admitting: list[tuple[ClaimedCallback, str, str]] = []
        for job, finished in group:
            destination = webhook_destination(job.callback_url or "")
            if finished is None:
                tasks.append(functools.partial(self._give_back, job.id, destination, None))
                continue
            claimed = claims.claimed_by_its_worker(job, finished)
            # A lease id no message has: the gate cannot park it (there is no message to park), so it defers instead.
            rid = f"{job.id}{_INFIX}claimed"
            if self.flow is not None and destination:
                asking.append((destination, rid))
                admitting.append((claimed, destination, rid))
            else:
                tasks.append(functools.partial(self._post_claimed, claimed, destination, rid, None))
        if asking:
            admissions: list[Admission] = self.ledger.submit(CallbackAdmissions(asking))
            for (claimed, destination, rid), admission in zip(admitting, admissions, strict=True):
                if admission.granted:
                    tasks.append(functools.partial(self._post_claimed, claimed, destination, rid, self.flow))
                else:
                    tasks.append(functools.partial(self._give_back, claimed.job.id, destination, admission))
        return tasks

    def _post_claimed(self, claimed: ClaimedCallback, destination: str, rid: str, flow: FlowControl | None) -> None:
        # The attempt's deadline falls inside the claim, which the reconciler takes back only a visibility timeout
        # after the job finished.
        error = self._attempt(claimed, time.monotonic() + self.settings.attempt_time_limit)
        if flow is not None:
            flow.finished(destination, rid, error)
        # Its success rides the next ledger batch someone waits for (a claim, the next group's admission), most
        # likely the jobs' statement, rather than wake the batcher for a statement of its own.
        self._record(claimed, error, functools.partial(self.ledger.post, wait=OUTCOME_RIDES))

    def _give_back(self, job_id: uuid.UUID, destination: str, admission: Admission | None) -> None:
        """A callback armed claimed for this worker and not POSTed: back to waiting (the attempt not counted), with a
        message due when the gate's deferral says (beyond the schedule horizon: parked in the ledger), or now. Deferred
        for its destination's concurrency limit, now: the gate parks that message on the destination's waiting list
        and a release wakes it, where `until`, the last lease's expiry, held it a visibility timeout (parked in the
        ledger until a reconciler pass: bench/README.md, 2026-12-04 13:40)."""
        now = self.clock()
        due_at = now
        if admission is not None and admission.reason is not Reason.LIMIT:
            due_at = max(admission.until or now, now) + timedelta(seconds=self.rand())
        parked = (due_at - now).total_seconds() > self.settings.schedule_horizon
        done = self.database.run(
            lambda conn: callbacks.give_back(conn, job_id, ARMED_ATTEMPT, now=now, due_at=due_at, parked=parked)
        )
        if isinstance(done, Dispatch):
            self._send(Dispatch(job_id, done.seq, due_at, destination))

    def _attempt(self, claimed: ClaimedCallback, deadline: float) -> DeliveryError | None:
        msg_id = f"{claimed.job.id}.{claimed.event.value}"
        try:
            self.webhook.post_event(claimed.url, msg_id, event(claimed, now=self.clock()), deadline=deadline)
        except DeliveryError as exc:
            return exc
        except TimeLimitExceeded:
            return TransientError(f"attempt exceeded the time limit of {self.settings.attempt_time_limit:g}s")
        except Exception as exc:
            log.exception("the status callback of job %s raised unexpectedly", claimed.job.id)
            return TransientError(f"{type(exc).__name__}: {exc}")
        return None

    def _record(
        self, claimed: ClaimedCallback, error: DeliveryError | None, post: Callable[[Any], None] | None = None
    ) -> None:
        job_id, attempt, now = claimed.job.id, claimed.attempt, self.clock()
        decision = decide(
            attempt=attempt, max_attempts=self.settings.max_attempts, failed=error is not None,
            permanent=isinstance(error, PermanentError), retry_after=getattr(error, "retry_after", None),
            policy=self.settings.backoff, now=now, rand=self.rand,
        )  # fmt: skip
        text = (str(error) or type(error).__name__)[:MAX_ERROR_LENGTH] if error is not None else ""
        if decision.verdict is Verdict.SUCCEED:
            # Written with the worker's next ledger batch (`write_batch`), which logs it; this thread goes on.
            (post or self.ledger.post)(CallbackSucceeded(claimed))
            return
        done: object
        if decision.verdict is Verdict.RETRY:
            assert decision.due_at is not None
            due_at = decision.due_at
            parked = (due_at - now).total_seconds() > self.settings.schedule_horizon
            done = self.database.run(
                lambda conn: callbacks.schedule_retry(
                    conn, job_id, attempt, now=now, due_at=due_at, error=text, parked=parked
                )
            )
            if isinstance(done, Dispatch):
                self._send(done)
            log.info("🔁 Job %s: callback retry in %.1fs (attempt %d: %s)", job_id, decision.delay, attempt, text)
        else:
            done = self.database.run(lambda conn: callbacks.fail(conn, job_id, attempt, now=now, error=text))
            log.warning("⚠️ Job %s: callback FAILED after attempt %d: %s", job_id, attempt, text)
        if not done:
            log.warning("Job %s: callback attempt %d was taken back meanwhile; its result is dropped", job_id, attempt)

    def _defer(self, dispatch: Dispatch, admission: Admission) -> None:
        """No attempt and no claim, as for a job (`FlowControl.defer`): parked on the destination's waiting list by
        the gate, or back when the gate says (in the delay queue, or in the ledger beyond the schedule horizon)."""
        if admission.parked:
            # Its lease left this process with the gate's script: an ack now would drop it once it comes back.
            self.dispatcher.broker.processing.acked = True
            return
        now = self.clock()
        due_at = max(admission.until or now, now) + timedelta(seconds=self.rand())
        if (due_at - now).total_seconds() > self.settings.schedule_horizon:
            self.database.run(lambda conn: callbacks.park(conn, dispatch.job_id, dispatch.seq, now=now, due_at=due_at))
            return
        self._send(Dispatch(dispatch.job_id, dispatch.seq, due_at, dispatch.destination))

    def _send(self, dispatch: Dispatch) -> None:
        try:
            self.dispatcher.send([dispatch], now=self.clock(), kind=CALLBACK_MESSAGES)
        except BrokerUnavailable as exc:
            log.warning("Job %s: could not enqueue its callback (%s); the reconciler will", dispatch.job_id, exc)


def declare_callback_actor(broker: RedisBroker, delivery: CallbackDelivery, settings: Settings) -> dramatiq.Actor:
    """Register the callback actor on `broker`, on the delivery actor's queue."""

    def deliver_callback(job_id: str) -> None:
        message = CurrentMessage.get_current_message()
        options = message.options if message else {}
        delivery(options.get(RID_OPTION, ""), options.get(DEST_OPTION, ""))

    return dramatiq.actor(
        deliver_callback,
        broker=broker,
        actor_name=CALLBACK_ACTOR,
        queue_name=settings.queue,
        # Only an unreachable ledger is worth Dramatiq's own retry (the claim never happened); the rest is the
        # reconciler's.
        retry_when=lambda retries, exception: isinstance(exception, LedgerUnavailable),
        min_backoff=500,
        max_backoff=30_000,
        time_limit=int(settings.attempt_time_limit * 1000),
    )
