"""The worker's side of flow control: each process's share of its threads per destination (`shares.py`), the
limits in force (defaults and operators' overrides), one gate call per ledger batch (failing open when Redis is
unreachable), what the gate hears of each attempt, and what becomes of a deferred message."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import redis

from actors import metrics
from actors.batching import Batcher
from actors.broker import BrokerUnavailable, Dispatcher
from actors.channels.base import DeliveryError, PermanentError
from actors.flow.gate import Gate
from actors.flow.shares import Shares
from actors.flow.terms import (
    Admission,
    AdmitRequest,
    BreakerPolicy,
    DestinationState,
    Limits,
    Outcome,
    QueueKeys,
    Reason,
    ReleaseRequest,
)
from actors.settings import Settings
from ledger import destinations, transitions
from ledger.database import Database
from ledger.transitions import Dispatch

log = logging.getLogger("wjp.flow")

#: Seconds between two reads of the operators' overrides: a change reaches every worker within this (SPEC: 5 s).
OVERRIDES_TTL = 2.0
#: Most seconds a successful attempt's release waits to ride with the gate call of this process's next claim rather
#: than make one of its own: at moderate rates that was nearly a gate call per job (bench/README.md, 2026-12-04).
#: Its slot is held that much longer, which only ever keeps the destination further below its limit.
RELEASE_RIDES = 0.02
#: Most seconds a deferral's record waits to share its transaction with the deferrals after it. The records are written
#: by a thread of their own, never in the claims' batch: a claim that waited for one waited a transaction for nothing
#: (bench/README.md, 2026-12-04 "noisy neighbour").
DEFERRALS_GATHER = 0.1
#: Seconds after this process saw a destination at its limit during which its releases go at once: they wake the
#: messages waiting for room.
PRESSED_FOR = 2.0


class Released(NamedTuple):
    """What became of an admitted attempt, for the gate (rides with the next ledger batch)."""

    destination: str
    rid: str
    outcome: Outcome
    retry_after: float | None = None


class Deferred(NamedTuple):
    """A message its destination deferred, for the ledger's record of the job's deferral."""

    job_id: uuid.UUID
    seq: int
    reason: str
    destination: str
    #: Until when the gate deferred it (the cooldown's or the pause's end), if it said.
    until: datetime | None = None


#: The reasons `wjp destinations reset` lifts (it closes the circuit and ends the pause).
LIFTED_BY_RESET = frozenset({Reason.CIRCUIT, Reason.THROTTLED})


def reason_holds(reason: str, state: DestinationState) -> bool:
    """Whether the gate's `state` of a destination still defers for `reason`; 'limit' and 'rate' are never lifted
    early (a release wakes those)."""
    if reason == Reason.CIRCUIT:
        return state.circuit != "closed"
    if reason == Reason.THROTTLED:
        return state.paused_until is not None
    return True


def awaiting_lift(deferred: Sequence[Deferred], now: datetime) -> list[Deferred]:
    """The deferrals for a circuit or a pause that was to last beyond `now`: the ones an operator's reset can have
    lifted early. One that ended by itself is left to its message, due about now and spread over a second, so that a
    paused destination's jobs do not all come back together (and spend attempts on its 429s)."""
    return [d for d in deferred if d.reason in LIFTED_BY_RESET and d.until is not None and d.until > now]


def gate_outcome(error: DeliveryError | None) -> Outcome:
    """What an attempt's result tells the gate about its destination."""
    if error is None:
        return Outcome.SUCCESS
    if isinstance(error, PermanentError):
        return Outcome.PERMANENT
    return Outcome.THROTTLED if getattr(error, "throttled", False) else Outcome.TRANSIENT


def effective_limits(defaults: Limits, override: destinations.Limits | None) -> Limits:
    """An operator's override where set, else the defaults, limit by limit."""
    if override is None:
        return defaults
    return Limits(
        defaults.concurrency if override.concurrency is None else override.concurrency,
        defaults.rate if override.rate is None else override.rate,
    )


class FlowControl:
    """Shared by the threads of one worker process; `admit` runs in its ledger batcher's thread, `post` queues a
    request for that batcher; the deferrals' records go together from a thread of their own (`deferrals`)."""

    def __init__(
        self,
        *,
        database: Database,
        dispatcher: Dispatcher,
        settings: Settings,
        threads: int,
        post: Callable[..., None],
        clock: Callable[[], datetime],
        rand: Callable[[], float],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        flow = settings.flow
        broker = dispatcher.broker
        self.gate = Gate(broker.client)
        self.queue = QueueKeys.of(settings.queue, broker.broker_id)
        self.database = database
        self.dispatcher = dispatcher
        self.settings = settings
        self.post = post
        self.clock = clock
        self.rand = rand
        self.defaults = Limits(flow.concurrency, flow.rate)
        self.breaker = BreakerPolicy(
            threshold=flow.breaker_threshold,
            cooldown=flow.breaker_cooldown,
            max_cooldown=max(flow.breaker_cooldown, settings.backoff.maximum),
        )
        #: Most attempts of one destination that holds threads this process runs at once (SPEC:
        #: WJP_DESTINATION_SHARE of its threads).
        self.shares = Shares(max(1, math.floor(flow.share * threads)), monotonic=monotonic)
        self._overrides: dict[str, destinations.Limits] = {}
        self._overrides_read_at = -math.inf
        self._monotonic = monotonic
        self._outage = False
        #: When this process last saw each destination defer a message for 'limit'.
        self._pressed: dict[str, float] = {}
        self.deferrals: Batcher[Deferred, None] = Batcher(self._write_deferrals, "wjp-deferrals")

    def finished(self, key: str, rid: str, error: DeliveryError | None) -> None:
        """The attempt admitted for message `rid` of `key` ended with `error` (None: success): its share is free,
        and the gate hears of it with the next ledger batch."""
        self.shares.give(key, rid, attempted=True)
        outcome = gate_outcome(error)
        if outcome is Outcome.SUCCESS and self._monotonic() - self._pressed.get(key, -math.inf) >= PRESSED_FOR:
            # Nothing to wake and no breaker to open: it goes with the next claim's gate call.
            self.post(Released(key, rid, outcome), wait=RELEASE_RIDES)
            return
        self.post(Released(key, rid, outcome, getattr(error, "retry_after", None)))

    def unclaimed(self, key: str, rid: str) -> None:
        """Message `rid` of `key` was admitted but did not claim its job: nothing was sent, its lease goes back."""
        self.shares.give(key, rid, attempted=False)
        self.post(Released(key, rid, Outcome.NONE))

    def limits(self, key: str) -> Limits:
        """The limits of `key`: an operator's override where set, else the defaults."""
        now = self._monotonic()
        if now - self._overrides_read_at >= OVERRIDES_TTL:
            self._overrides_read_at = now
            try:
                self._overrides = self.database.run(destinations.overrides)
            except Exception as exc:  # the ledger is out: the last overrides read stay in force
                log.warning("could not read the destinations' limits (%s); keeping the last ones", exc)
        return effective_limits(self.defaults, self._overrides.get(key))

    def admit(self, asking: Sequence[tuple[int, str, str]], requests: Sequence[object]) -> dict[int, Admission]:
        """The gate's answer to each claim `(index, destination, rid)` of a ledger batch, by index; the batch's
        `Released` done in the same round trip. A granted one holds a share of this process until `finished` or
        `unclaimed`.

        The share is counted from the admission on, in the batcher's one thread: a thread waiting for its claim
        holds none."""
        return self._admit(asking, [r for r in requests if isinstance(r, Released)])

    def _admit(self, asking: Sequence[tuple[int, str, str]], releases: Sequence[Released]) -> dict[int, Admission]:
        if not asking and not releases:
            return {}
        taken = [self.shares.take(key, rid) for _, key, rid in asking]
        admits = [
            AdmitRequest(key, rid, self.limits(key), park=rid, share_full=not took)
            for (_, key, rid), took in zip(asking, taken, strict=True)
        ]
        freed = [ReleaseRequest(r.destination, r.rid, r.outcome, self.limits(r.destination), r.retry_after)
                 for r in releases]  # fmt: skip
        admissions = self.decide(admits, freed)
        for (_, key, rid), took, admission in zip(asking, taken, admissions, strict=True):
            if took and not admission.granted:
                self.shares.give(key, rid, attempted=False)
            if admission.reason is Reason.LIMIT or admission.parked:
                self._pressed_now(key)
        return {n: admission for (n, *_), admission in zip(asking, admissions, strict=True)}

    def _pressed_now(self, key: str) -> None:
        now = self._monotonic()
        if len(self._pressed) >= 1024:  # destinations come and go: keep those pressed lately
            self._pressed = {k: t for k, t in self._pressed.items() if now - t < PRESSED_FOR}
        self._pressed[key] = now

    def decide(self, admits: Sequence[AdmitRequest], releases: Sequence[ReleaseRequest]) -> list[Admission]:
        """The gate's answers to `admits`, its releases done, in one round trip. With Redis unreachable every
        admit is granted (the ledger's claim still fences each attempt) and the releases are dropped (their leases
        expire): one warning per outage."""
        try:
            admissions = self.gate.batch(
                admits, releases, queue=self.queue, lease_seconds=self.settings.visibility_timeout,
                breaker=self.breaker,
            )  # fmt: skip
        except redis.RedisError as exc:
            if not self._outage:
                self._outage = True
                log.warning("flow control cannot reach Redis (%s); admitting every attempt until it can", exc)
            return [Admission(granted=True)] * len(admits)
        if self._outage:
            self._outage = False
            log.warning("flow control reaches Redis again")
        return admissions

    def _write_deferrals(self, deferred: list[Deferred]) -> list[None]:
        """Record since when and why each deferred job waits; fail those that waited past WJP_MAX_DEFERRAL (the
        `deferrals` batcher's function: nobody waits for an answer)."""
        answers: list[None] = [None] * len(deferred)
        now, max_deferral = self.clock(), self.settings.flow.max_deferral

        def record(conn: Any) -> list[uuid.UUID]:
            transitions.record_deferrals(conn, [(d.job_id, d.seq, d.reason) for d in deferred], now=now)
            ids = [d.job_id for d in deferred]
            return transitions.give_up_deferred(conn, now=now, max_deferral=max_deferral, job_ids=ids)

        try:
            failed = self.database.run(record, transaction=True)
        except Exception as exc:  # a record missed is made at the job's next deferral
            log.warning("could not record %d deferrals: %s", len(deferred), exc)
            return answers
        for job_id in failed:
            log.warning("⚠️ Job %s marked as FAILED: deferred on its destination for over %gs", job_id, max_deferral)
        self._release_lifted(deferred)
        return answers

    def _release_lifted(self, deferred: Sequence[Deferred]) -> None:
        """Send at once the jobs of `deferred`, just recorded, whose reason the gate no longer holds: an operator's
        reset that landed between the gate's answer and the record's commit released the jobs recorded by then, not
        these. One gate round trip, only for the deferrals `awaiting_lift`.

        A reset lifts in Redis, then releases in the ledger; here the record commits, then the gate is read. So either
        this read sees the reset, or the record committed before the reset's UPDATE began, whose READ COMMITTED
        snapshot then holds it (a record still uncommitted, that UPDATE skips: the row's visible version does not
        match)."""
        now = self.clock()
        liftable = awaiting_lift(deferred, now)
        if not liftable:
            return
        try:
            states = {state.key: state for state in self.gate.inspect(sorted({d.destination for d in liftable}))}
            lifted = [(d.job_id, d.seq, d.reason) for d in liftable
                      if not reason_holds(d.reason, states[d.destination])]  # fmt: skip
            if not lifted:
                return

            def release(conn: Any) -> list[Dispatch]:
                # Guarded on each job's seq: one the reset released too is not sent twice.
                dispatches = transitions.release_deferrals(conn, lifted, now=now)
                self.dispatcher.send(dispatches, now=now)
                return dispatches

            self.database.run(release, transaction=True)
        except Exception as exc:  # they come back when the gate said
            log.warning("could not check whether %d deferrals still hold: %s", len(liftable), exc)

    def defer(self, dispatch: Dispatch, admission: Admission) -> None:
        """No attempt and no claim: the message waits on its destination's waiting list (parked by the gate), or
        comes back when the gate says (in the delay queue, or parked in the ledger beyond the schedule horizon).
        Called in the worker thread that processes the message."""
        reason = admission.reason
        assert reason is not None
        metrics.observe_deferral(reason.value)
        deferral = Deferred(dispatch.job_id, dispatch.seq, reason.value, dispatch.destination, admission.until)
        if admission.parked:
            # Its lease left this process with the gate's script: an ack now would drop it once it comes back.
            self.dispatcher.broker.processing.acked = True
            self.deferrals.post(deferral, wait=DEFERRALS_GATHER)
            return
        now = self.clock()
        # Spread over a second, so that a destination's deferred jobs do not all come back at one instant.
        due_at = max(admission.until or now, now) + timedelta(seconds=self.rand())
        if (due_at - now).total_seconds() > self.settings.schedule_horizon:
            parked = self.database.run(
                lambda conn: transitions.park_deferred(
                    conn, dispatch.job_id, dispatch.seq, now=now, due_at=due_at, reason=reason.value
                )
            )
            if parked:  # recorded as it parked, with its seq negated: the same check as a batch of records
                self._release_lifted([deferral._replace(seq=-dispatch.seq)])
            return
        self.deferrals.post(deferral, wait=DEFERRALS_GATHER)
        try:
            self.dispatcher.send([Dispatch(dispatch.job_id, dispatch.seq, due_at, dispatch.destination)], now=now)
        except BrokerUnavailable as exc:
            log.warning("Job %s: could not defer its message (%s); the reconciler will send it", dispatch.job_id, exc)
