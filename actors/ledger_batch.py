"""The worker's ledger batch: every thread's claims and successes, the jobs' and the status callbacks', with their
destinations' gate admissions and releases, written together in a few shared statements and one gate round trip per
batch; and the recording of an outcome that rides out a ledger outage inside the attempt's claim."""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple, TypeVar

from sqlalchemy import Connection

from actors.batching import Batcher
from actors.callback_sender import ArmedSender
from actors.callbacks import (
    CallbackAdmissions,
    CallbackClaim,
    CallbackSucceeded,
    log_recorded,
    not_recorded,
    write_batch,
)
from actors.claims_coming import ClaimsComing
from actors.flow import Admission
from actors.flow.control import FlowControl, Released
from actors.settings import Settings
from ledger import claims
from ledger.callbacks import ClaimedCallback
from ledger.claims import ClaimedJob, Finished
from ledger.database import Database
from ledger.errors import LedgerUnavailable

log = logging.getLogger("wjp.worker")
T = TypeVar("T")


def worker_name() -> str:
    """Who holds a claim, as recorded on each attempt: host and process."""
    return _worker_name(os.getpid())


@functools.cache
def _worker_name(pid: int) -> str:
    # Asked for every ledger batch; keyed by pid, since Dramatiq forks its worker processes from one parent.
    return f"{socket.gethostname()}:{pid}"


#: Longest a success waits for a claim on its way to share a statement with (at most this much later in the ledger).
SUCCESS_LINGER = 0.005


class JobClaim(NamedTuple):
    """A message that is to claim its job's attempt; with a destination, admitted by the gate first."""

    job_id: uuid.UUID
    seq: int
    destination: str = ""
    rid: str = ""


class Delivered(NamedTuple):
    """A successful attempt whose outcome is yet to be written."""

    job: ClaimedJob
    claimed_at: datetime
    elapsed_ms: float


class LedgerBatch:
    """The ledger writes of one worker process, batched (`batcher`): its threads submit claims (answered with the
    job or callback claimed, None, or the gate's deferral) and post successes (written with the next batch)."""

    def __init__(
        self, *, database: Database, settings: Settings, armed: ArmedSender, clock: Callable[[], datetime]
    ) -> None:
        self.database = database
        self.settings = settings
        self.armed = armed
        self.clock = clock
        #: The destinations' flow control, which posts its releases to `batcher` (set once it is built over it).
        self.flow: FlowControl | None = None
        # Claims and successes are the two writes of every job: the process's threads share statements of them, and
        # a success waits a moment for a claim on its way to share its statement (and commit) with. A thread waits
        # for its claim, but not for its success to be written: it takes its next message meanwhile.
        self.claims_coming = ClaimsComing()
        self.batcher: Batcher[Request, Result] = Batcher(
            self.write, "wjp-ledger", linger=SUCCESS_LINGER, coming=self.claims_coming
        )

    def write(self, requests: list[Request]) -> list[Result | BaseException]:
        """One batch: each request's answer, in order."""
        admissions: dict[int, Admission] = {}
        groups: dict[int, list[Admission]] = {}
        if self.flow is not None:
            admissions, groups = self._admit(requests)
            # A deferred claim's answer is the gate's: its thread need not wait for the others' ledger statement
            # (bench/README.md, 2026-12-04 "noisy neighbour": deferred messages held threads through whole batches).
            for n, admission in admissions.items():
                if not admission.granted:
                    self.batcher.answer_now(n, admission)
        granted = [r for n, r in enumerate(requests) if admissions.get(n, GRANTED).granted]
        delivered = [r for r in requests if isinstance(r, Delivered)]
        dispatches = [(r.job_id, r.seq) for r in granted if isinstance(r, JobClaim)]
        attempts = [(item.job.id, item.job.attempt) for item in delivered]
        now = self.clock()
        callback_claims = [r for r in granted if isinstance(r, CallbackClaim)]
        callback_successes = [r for r in requests if isinstance(r, CallbackSucceeded)]
        # Status callbacks' successes ride the jobs' statement (one statement and one commit for both), unless claims
        # of callbacks' messages need the callbacks' own statement anyway.
        riding = [] if callback_claims else callback_successes
        callbacks_done, callbacks_claimed = write_batch(
            self.database, callback_claims, [] if riding else callback_successes, now=now
        )
        done, claimed, riding_done = self._write_jobs(attempts, dispatches, delivered, riding, now=now)
        if riding:
            callbacks_done = riding_done
        return self._answers(requests, admissions, groups,
                             {JobClaim: iter(claimed), CallbackClaim: iter(callbacks_claimed)},
                             {Delivered: iter(done), CallbackSucceeded: iter(callbacks_done)})  # fmt: skip

    def _admit(self, requests: list[Request]) -> tuple[dict[int, Admission], dict[int, list[Admission]]]:
        """The gate's answers, in one round trip: to each claim with a destination, by its index in `requests`, and
        to each `CallbackAdmissions`, a list by its index."""
        asking: list[tuple[int, str, str]] = []
        owners: list[tuple[int, bool]] = []  # per asking: the request's index, and whether it is a group's
        for n, r in enumerate(requests):
            if isinstance(r, JobClaim | CallbackClaim) and r.destination:
                asking.append((len(asking), r.destination, r.rid))
                owners.append((n, False))
            elif isinstance(r, CallbackAdmissions):
                asking += [(len(asking) + i, destination, rid) for i, (destination, rid) in enumerate(r.asking)]
                owners += [(n, True)] * len(r.asking)
        answers = self.flow.admit(asking, requests)  # type: ignore[union-attr]
        admissions: dict[int, Admission] = {}
        groups: dict[int, list[Admission]] = {}
        for k, (n, grouped) in enumerate(owners):
            if grouped:
                groups.setdefault(n, []).append(answers[k])
            else:
                admissions[n] = answers[k]
        return admissions, groups

    def _write_jobs(
        self, attempts: list[tuple[uuid.UUID, int]], dispatches: list[tuple[uuid.UUID, int]],
        delivered: list[Delivered], riding: list[CallbackSucceeded], *, now: datetime,
    ) -> tuple[list[bool], Sequence[ClaimedJob | BaseException | None], list[bool]]:  # fmt: skip
        """The jobs' successes and claims, with the status callbacks' successes `riding` along: which successes took,
        each claim's answer, and which callbacks' successes took."""
        if not attempts and not dispatches and not riding:
            return [], [], []
        # Drawn once, outside the retried statement: a retry finds the claims it committed. The claims are stamped
        # with the database's clock, by which the reconciler expires them, whatever this host's clock says.
        token = uuid.uuid4()
        claimed: Sequence[ClaimedJob | BaseException | None]
        # What the successes of jobs with a status callback returned: the statement armed each callback claimed for
        # this worker (migration 0010), whose `armed` sender POSTs it with what its body needs.
        finished: dict[uuid.UUID, Finished] = {}
        recorded: set[uuid.UUID] = set()
        deliveries = [(r.claimed.job.id, r.claimed.attempt) for r in riding]
        try:
            done, claimed = self.database.run(
                lambda conn: claims.succeed_and_claim(
                    conn, attempts, dispatches, now=now, worker=worker_name(), token=token, database_clock=True,
                    finished=finished, delivered=deliveries, recorded=recorded,
                ),
                kept=True,
            )
            riding_done = [job_id in recorded for job_id, _ in deliveries]
            log_recorded(riding, riding_done)
        except LedgerUnavailable as exc:
            # The claims hear of it at once (their messages come back later), giving back below what their
            # admissions took; the successes ride it out (the callbacks' are sent again once their claims expire).
            claimed = [exc] * len(dispatches)
            done = self._write_successes(attempts, delivered, now=now) if delivered else []
            riding_done = not_recorded(riding, exc)
        except Exception:
            # One request the database refuses fails the statement it shares: each goes on its own, so that only it
            # fails, and no success is dropped (to be delivered again once its claim expires).
            log.exception("a ledger batch failed; writing its %d jobs' requests one by one", len(attempts + dispatches))
            done = self._write_successes(attempts, delivered, now=now) if delivered else []
            claimed = [self._claim_alone(dispatch, now=now) for dispatch in dispatches]
            riding_done = write_batch(self.database, [], riding, now=now)[0]
        for (job, _, elapsed_ms), succeeded in zip(delivered, done, strict=True):
            if succeeded:
                log.info("✅ Job %s success (%s, attempt %d, %.0f ms)", job.id, job.channel, job.attempt, elapsed_ms,
                         extra={"job_id": job.id, "attempt": job.attempt})  # fmt: skip
            else:
                log_taken_back(job)
        self.armed.post([job for (job, *_), ok in zip(delivered, done, strict=True) if ok and job.callback_url],
                        finished)  # fmt: skip
        return done, claimed, riding_done

    def _answers(
        self, requests: list[Request], admissions: dict[int, Admission], groups: dict[int, list[Admission]],
        claims: dict[type, Iterator[object]], successes: dict[type, Iterator[bool]],
    ) -> list[Result | BaseException]:  # fmt: skip
        """Each request's answer, in order, from the answers of its kind (`claims`, `successes`, by type); an
        admitted claim that did not claim gives its admission back."""
        results: list[Result | BaseException] = []
        for n, request in enumerate(requests):
            kind = type(request)
            if kind in successes:
                results.append(next(successes[kind]))
            elif kind is CallbackAdmissions:
                results.append(groups.get(n) or [GRANTED] * len(request.asking))  # type: ignore[union-attr]
            elif kind not in claims:
                results.append(None)
            elif not admissions.get(n, GRANTED).granted:
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
        self, attempts: list[tuple[uuid.UUID, int]], delivered: list[Delivered], *, now: datetime
    ) -> list[bool]:
        try:
            return self.record(
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

    def record(self, statement: Callable[[Connection], T], *, claimed_at: datetime, kept: bool = False) -> T:
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


Request = JobClaim | Delivered | CallbackClaim | CallbackAdmissions | CallbackSucceeded | Released
#: A claim's answer: the job or callback claimed, None (not claimed) or the gate's deferral; an admission's: the
#: gate's; a success's: whether it was written.
Result = ClaimedJob | ClaimedCallback | Admission | list[Admission] | bool | None
GRANTED = Admission(granted=True)


def log_taken_back(job: ClaimedJob) -> None:
    log.warning("Job %s: attempt %d was taken back meanwhile; its result is dropped", job.id, job.attempt)

