"""A random walk through the job lifecycle against a model: every transition, with current and stale
dispatches and attempts, an injected clock, and the ledger's invariants checked after each step."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from ledger import claims, intake, maintenance, queries, transitions
from ledger.claims import EARLY_CLAIM_TOLERANCE
from ledger.database import Database
from ledger.intake import Intake, NewNotification
from ledger.schema import attempts, jobs
from ledger.states import FINISHED, WAITING, Outcome, Status
from tests.conftest import reset_ledger
from tests.ledger.conftest import T0

KEYS = ("a", "b", "c", "d")
SCOPES = ("", "key-1")
GRACE = timedelta(seconds=10)
HORIZON = timedelta(seconds=60)
PROCESSING = frozenset({Status.PROCESSING})
#: The attempt held (0), or the one before or after it: a stale or confused worker.
ATTEMPT_OFFSETS = st.sampled_from([0, -1, 1])


@dataclass
class Expected:
    """What the ledger should hold for one job."""

    scope: str
    status: Status
    attempts: int
    max_attempts: int
    seq: int
    due: datetime
    claimed_at: datetime | None = None
    throttles: int = 0
    deferred_since: datetime | None = None


class LedgerMachine(RuleBasedStateMachine):
    """Drives the ledger's transitions at random on `database` and compares every answer with a model."""

    database: Database

    def __init__(self) -> None:
        super().__init__()
        reset_ledger(self.database)
        self.now = T0
        self.model: dict[uuid.UUID, Expected] = {}
        self.hashes: dict[tuple[str, str], tuple[str, uuid.UUID]] = {}
        self.terminal: dict[uuid.UUID, tuple[Any, list[Any]]] = {}

    def run(self, operation):
        return self.database.run(operation)

    def pick(self, index: int, statuses: frozenset[Status] | None = None) -> tuple[uuid.UUID, Expected]:
        """A job, among those in `statuses` when there are any (so that most calls can take effect)."""
        ids = sorted(self.model)
        if statuses is not None:
            ids = [job_id for job_id in ids if self.model[job_id].status in statuses] or ids
        job_id = ids[index % len(ids)]
        return job_id, self.model[job_id]

    def has_jobs(self) -> bool:
        return bool(self.model)

    # --- rules ---------------------------------------------------------------------------------------------

    @initialize(count=st.integers(1, 4), max_attempts=st.integers(1, 3))
    def a_few_jobs_due_now(self, count, max_attempts):
        for key in KEYS[:count]:
            self.intake(key, "", "hello", max_attempts, True, None)

    @rule(
        key=st.sampled_from(KEYS),
        scope=st.sampled_from(SCOPES),
        message=st.sampled_from(["hello", "other"]),
        max_attempts=st.integers(1, 3),
        dispatch_now=st.booleans(),
        send_in=st.sampled_from([None, -30, 0, 20, 120]),
    )
    def intake(self, key, scope, message, max_attempts, dispatch_now, send_in):
        send_at = None if send_in is None else self.now + timedelta(seconds=send_in)
        request = NewNotification(
            idempotency_key=key,
            recipient="user@example.com",
            channel="log",
            message=message,
            max_attempts=max_attempts,
            send_at=send_at,
            scope=scope,
        )
        result = self.run(lambda conn: intake.accept(conn, request, now=self.now, dispatch_now=dispatch_now))
        known = self.hashes.get((scope, key))
        if known is None:
            assert result.outcome is Intake.CREATED
            due = max(self.now, send_at) if send_at else self.now
            seq = 1 if dispatch_now else 0
            assert (result.dispatch_seq, result.next_attempt_at) == (seq, due)
            self.hashes[(scope, key)] = (request.payload_hash(), result.job_id)
            self.model[result.job_id] = Expected(scope, Status.PENDING, 0, max_attempts, seq, due)
        else:
            digest, job_id = known
            expected = Intake.REPLAYED if digest == request.payload_hash() else Intake.MISMATCH
            assert (result.outcome, result.job_id, result.status) == (expected, job_id, self.model[job_id].status)

    # Each transition as the worker calls it, on one job; each says whether it took effect.

    def claim_job(self, job_id: uuid.UUID, which: str) -> bool:
        job = self.model[job_id]
        # A parked job (seq < 0) has no current message: its last one (-seq) is stale, and the next not sent yet.
        seq = abs(job.seq) + {"current": 0, "stale": -1, "next": 1}[which]
        claimed = self.run(lambda conn: claims.claim(conn, job_id, seq, now=self.now, worker="w"))
        takes = (
            job.status in WAITING
            and which == "current"
            and job.seq >= 0
            and job.due <= self.now + EARLY_CLAIM_TOLERANCE
        )
        assert (claimed is not None) == takes
        if takes:
            job.status, job.attempts, job.claimed_at = Status.PROCESSING, job.attempts + 1, self.now
            job.deferred_since = None
            assert (claimed.attempt, claimed.max_attempts) == (job.attempts, job.max_attempts)
            again = self.run(lambda conn: claims.claim(conn, job_id, seq, now=self.now, worker="w2"))
            assert again is None
        return takes

    def holds(self, job: Expected, attempt: int) -> bool:
        return job.status is Status.PROCESSING and attempt == job.attempts

    def succeed_job(self, job_id: uuid.UUID, offset: int) -> None:
        job = self.model[job_id]
        attempt = job.attempts + offset
        done = self.run(lambda conn: claims.succeed(conn, job_id, attempt, now=self.now))
        assert done == self.holds(job, attempt)
        if done:
            job.status, job.claimed_at = Status.SUCCESS, None

    def fail_job(self, job_id: uuid.UUID, offset: int, outcome: Outcome) -> None:
        job = self.model[job_id]
        attempt = job.attempts + offset
        done = self.run(
            lambda conn: transitions.fail(conn, job_id, attempt, now=self.now, outcome=outcome, error="failed")
        )
        assert done == self.holds(job, attempt)
        if done:
            job.status, job.claimed_at = Status.FAILED, None

    def retry_job(self, job_id: uuid.UUID, offset: int, delay: int, parked: bool = False) -> None:
        job = self.model[job_id]
        attempt = job.attempts + offset
        if self.holds(job, attempt) and job.attempts >= job.max_attempts:
            # The worker's decision: with no attempt left, a transient error fails the job instead.
            self.fail_job(job_id, offset, Outcome.TRANSIENT_ERROR)
            return
        due_at = self.now + timedelta(seconds=delay)
        if parked:
            done = self.run(
                lambda conn: transitions.park_retry(conn, job_id, attempt, now=self.now, due_at=due_at, error="later")
            )
            assert done == self.holds(job, attempt)
            if done:
                job.status, job.claimed_at, job.seq, job.due = Status.RETRY, None, -job.seq, due_at
            return
        dispatch = self.run(
            lambda conn: transitions.schedule_retry(conn, job_id, attempt, now=self.now, due_at=due_at, error="later")
        )
        assert (dispatch is not None) == self.holds(job, attempt)
        if dispatch is not None:
            job.status, job.claimed_at, job.seq, job.due = Status.RETRY, None, job.seq + 1, due_at
            assert (dispatch.job_id, dispatch.seq, dispatch.due_at) == (job_id, job.seq, due_at)

    @precondition(has_jobs)
    @rule(
        index=st.integers(0, 7),
        result=st.sampled_from(["success", "retry", "parked retry", "permanent", "crash"]),
        delay=st.sampled_from([0, 2, 4, 40]),
    )
    def deliver(self, index, result, delay):
        """A worker claims the job's current message and records what the channel said (or dies)."""
        job_id, _ = self.pick(index, WAITING)
        if not self.claim_job(job_id, "current") or result == "crash":
            return
        if result == "success":
            self.succeed_job(job_id, 0)
        elif result in ("retry", "parked retry"):
            self.retry_job(job_id, 0, delay, parked=result == "parked retry")
        else:
            self.fail_job(job_id, 0, Outcome.PERMANENT_ERROR)

    def has_attempted_jobs(self) -> bool:
        return any(job.attempts for job in self.model.values())

    @precondition(has_attempted_jobs)
    @rule(index=st.integers(0, 7), result=st.sampled_from(["success", "retry", "permanent"]))
    def late_result(self, index, result):
        """The result of an attempt no longer held (taken back, or already recorded) arrives: it changes nothing."""
        attempted = sorted(job_id for job_id, job in self.model.items() if job.attempts)
        job_id = attempted[index % len(attempted)]
        job = self.model[job_id]
        offset = -1 if job.status is Status.PROCESSING else 0
        if job.attempts + offset < 1:
            return
        if result == "success":
            self.succeed_job(job_id, offset)
        elif result == "retry":
            self.retry_job(job_id, offset, 1)
        else:
            self.fail_job(job_id, offset, Outcome.PERMANENT_ERROR)

    @precondition(has_jobs)
    @rule(index=st.integers(0, 7), which=st.sampled_from(["current", "stale", "next"]))
    def claim(self, index, which):
        self.claim_job(self.pick(index, WAITING)[0], which)

    @precondition(has_jobs)
    @rule(index=st.integers(0, 7), offset=ATTEMPT_OFFSETS)
    def succeed(self, index, offset):
        self.succeed_job(self.pick(index, PROCESSING)[0], offset)

    @precondition(has_jobs)
    @rule(index=st.integers(0, 7), offset=ATTEMPT_OFFSETS, outcome=st.sampled_from(Outcome))
    def fail(self, index, offset, outcome):
        self.fail_job(self.pick(index, PROCESSING)[0], offset, outcome)

    @precondition(has_jobs)
    @rule(index=st.integers(0, 7), offset=ATTEMPT_OFFSETS, delay=st.integers(0, 90), parked=st.booleans())
    def schedule_retry(self, index, offset, delay, parked):
        self.retry_job(self.pick(index, PROCESSING)[0], offset, delay, parked)

    @precondition(has_jobs)
    @rule(
        index=st.integers(0, 7),
        offset=ATTEMPT_OFFSETS,
        delay=st.integers(0, 90),
        max_throttles=st.integers(0, 2),
        parked=st.booleans(),
    )
    def throttle(self, index, offset, delay, max_throttles, parked):
        """A throttling answer: the attempt goes back into the budget, up to `max_throttles` per job."""
        job_id, job = self.pick(index, PROCESSING)
        attempt, due_at = job.attempts + offset, self.now + timedelta(seconds=delay)
        done = self.run(
            lambda conn: transitions.throttle(
                conn, job_id, attempt, now=self.now, due_at=due_at, error="429", max_throttles=max_throttles,
                parked=parked,
            )
        )
        takes = self.holds(job, attempt) and job.throttles < max_throttles
        assert (done is not None) == takes
        if takes:
            job.status, job.claimed_at, job.due = Status.RETRY, None, due_at
            job.seq = -job.seq if parked else job.seq + 1
            job.max_attempts, job.throttles = job.max_attempts + 1, job.throttles + 1
            assert parked or (done.seq, done.due_at) == (job.seq, due_at)

    @precondition(has_jobs)
    @rule(
        index=st.integers(0, 7),
        stale=st.booleans(),
        reason=st.sampled_from(["limit", "rate", "circuit", "throttled"]),
        park_for=st.sampled_from([None, 40, 120]),
    )
    def defer(self, index, stale, reason, park_for):
        """A worker defers the job's message on its destination: recorded, or (far off) parked in the ledger."""
        job_id, job = self.pick(index, WAITING)
        seq = job.seq - 1 if stale else job.seq
        takes = job.status in WAITING and not stale
        if park_for is None:
            self.run(lambda conn: transitions.record_deferrals(conn, [(job_id, seq, reason)], now=self.now))
        else:
            due_at = self.now + timedelta(seconds=park_for)
            done = self.run(
                lambda conn: transitions.park_deferred(conn, job_id, seq, now=self.now, due_at=due_at, reason=reason)
            )
            assert done == takes
            if takes:
                job.seq, job.due = -job.seq, due_at
        if takes and job.deferred_since is None:
            job.deferred_since = self.now

    @precondition(has_jobs)
    @rule(max_deferral=st.sampled_from([1, 30, 100]), by_id=st.booleans(), index=st.integers(0, 7))
    def give_up_deferred(self, max_deferral, by_id, index):
        """Jobs deferred longer than the most deferral fail, found by the index or named by a worker."""
        cutoff = self.now - timedelta(seconds=max_deferral)
        job_ids = [self.pick(index)[0]] if by_id else None
        failed = self.run(
            lambda conn: transitions.give_up_deferred(conn, now=self.now, max_deferral=max_deferral, job_ids=job_ids)
        )
        expected = {
            job_id
            for job_id, job in self.model.items()
            if job.status in WAITING and job.deferred_since is not None and job.deferred_since < cutoff
            and (job_ids is None or job_id in job_ids)
        }
        assert set(failed) == expected
        for job_id in expected:
            self.model[job_id].status = Status.FAILED

    @precondition(has_jobs)
    @rule(visibility=st.sampled_from([0, 1, 30, 60]), read=st.sampled_from(["query", "every-job", "stale"]))
    def expire(self, visibility, read):
        cutoff = self.now - timedelta(seconds=visibility)
        expired = {
            job_id
            for job_id, job in self.model.items()
            if job.status is Status.PROCESSING and job.claimed_at is not None and job.claimed_at < cutoff
        }
        if read == "query":
            claims = self.run(lambda conn: maintenance.expired_claims(conn, cutoff=cutoff, limit=100))
            assert {job_id for job_id, _ in claims} == expired
            assert all(attempt == self.model[job_id].attempts for job_id, attempt in claims)
            claimed_at = [self.model[job_id].claimed_at for job_id, _ in claims]
            assert claimed_at == sorted(claimed_at)
        elif read == "every-job":
            claims = [(job_id, job.attempts) for job_id, job in self.model.items()]
        else:
            claims = [(job_id, job.attempts - 1) for job_id, job in self.model.items()]
            expired = set()

        dispatches, failed = self.run(
            lambda conn: transitions.expire(conn, claims, now=self.now, cutoff=cutoff, error="visibility timeout")
        )

        retried = {job_id for job_id in expired if self.model[job_id].attempts < self.model[job_id].max_attempts}
        assert {d.job_id for d in dispatches} == retried
        assert set(failed) == expired - retried
        for job_id in expired:
            job = self.model[job_id]
            job.claimed_at = None
            if job_id in retried:
                job.status, job.seq, job.due = Status.RETRY, job.seq + 1, self.now
            else:
                job.status = Status.FAILED
        assert all(d.seq == self.model[d.job_id].seq and d.due_at == self.now for d in dispatches)

    @precondition(has_jobs)
    @rule(index=st.integers(0, 7), own_scope=st.booleans())
    def cancel(self, index, own_scope):
        job_id, job = self.pick(index, WAITING)
        scope = job.scope if own_scope else "someone-else"
        done = self.run(lambda conn: transitions.cancel(conn, job_id, scope=scope, now=self.now))
        assert done == (job.status in WAITING and own_scope)
        if done:
            job.status = Status.CANCELLED

    @precondition(has_jobs)
    @rule(index=st.integers(0, 7), extra=st.integers(1, 2))
    def manual_retry(self, index, extra):
        job_id, job = self.pick(index, frozenset({Status.FAILED}))
        dispatch = self.run(lambda conn: transitions.manual_retry(conn, job_id, now=self.now, extra_attempts=extra))
        assert (dispatch is not None) == (job.status is Status.FAILED)
        if dispatch is not None:
            job.status, job.max_attempts, job.seq, job.due, job.deferred_since = (
                Status.PENDING,
                job.attempts + extra,
                job.seq + 1,
                self.now,
                None,
            )
            assert dispatch.seq == job.seq

    @precondition(has_jobs)
    @rule(index=st.integers(0, 7), stale=st.booleans())
    def redispatch(self, index, stale):
        job_id, job = self.pick(index, WAITING)
        seq = job.seq - 1 if stale else job.seq
        sent = self.run(lambda conn: transitions.redispatch(conn, [(job_id, seq)], now=self.now))
        takes = job.status in WAITING and not stale
        assert len(sent) == (1 if takes else 0)
        if takes:
            job.seq = abs(job.seq) + 1
            assert (sent[0].seq, sent[0].due_at) == (job.seq, job.due)

    @rule()
    def reconcile_waiting(self):
        """A reconciler pass that finds every candidate lost: each is re-dispatched once, even if asked twice."""
        overdue_before, schedule_until = self.now - GRACE, self.now + HORIZON
        found = self.run(
            lambda conn: maintenance.waiting_candidates(
                conn, overdue_before=overdue_before, schedule_until=schedule_until, after=None, limit=100
            )
        )
        expected = {
            job_id
            for job_id, job in self.model.items()
            if job.status in WAITING
            and ((job.seq > 0 and job.due < overdue_before) or (job.seq <= 0 and job.due <= schedule_until))
        }
        assert {job_id for job_id, _, _ in found} == expected
        lost = [(job_id, seq) for job_id, seq, _ in found]
        first = self.run(lambda conn: transitions.redispatch(conn, lost, now=self.now))
        second = self.run(lambda conn: transitions.redispatch(conn, lost, now=self.now))
        assert ({d.job_id for d in first}, second) == (expected, [])
        for job_id in expected:
            self.model[job_id].seq = abs(self.model[job_id].seq) + 1

    @rule(seconds=st.sampled_from([0.3, 0.5, 0.7, 1, 5, 31, 61]))
    def advance_clock(self, seconds):
        self.now += timedelta(seconds=seconds)

    # --- invariants ----------------------------------------------------------------------------------------

    @invariant()
    def the_ledger_agrees_with_the_model_and_its_own_rules(self):
        def read(conn):
            rows = conn.execute(select(jobs)).all()
            history = conn.execute(select(attempts).order_by(attempts.c.job_id, attempts.c.number)).all()
            stats = queries.queue_stats(conn, now=self.now)
            exact = queries.count_by_status(conn)
            mean = conn.execute(select(func.avg(jobs.c.attempts)).where(jobs.c.status == "SUCCESS")).scalar()
            return rows, history, stats, exact, mean

        rows, history, stats, exact, mean = self.database.run(read, transaction=True)

        assert stats.counts == exact
        assert stats.avg_attempts_success == pytest.approx(float(mean or 0), abs=1e-4)
        assert {row.id for row in rows} == set(self.model)

        recorded: dict[uuid.UUID, list[Any]] = {}
        for attempt in history:
            recorded.setdefault(attempt.job_id, []).append(attempt)

        for row in rows:
            job = self.model[row.id]
            status = Status(row.status)
            assert (status, row.attempts, row.max_attempts, row.dispatch_seq, row.throttles) == (
                job.status,
                job.attempts,
                job.max_attempts,
                job.seq,
                job.throttles,
            ), row
            assert row.deferred_since == job.deferred_since, row
            assert row.attempts <= row.max_attempts
            if status in WAITING:
                assert row.next_attempt_at == job.due
            assert row.claimed_at == (job.claimed_at if status is Status.PROCESSING else None)
            assert (row.completed_at is not None) == (status in FINISHED)

            # One recorded attempt per finished attempt, numbered 1.., each with its outcome; the running
            # attempt (only while PROCESSING) is the job row itself.
            closed = recorded.get(row.id, [])
            running = 1 if status is Status.PROCESSING else 0
            assert len(closed) + running == row.attempts
            assert [a.number for a in closed] == list(range(1, len(closed) + 1))
            assert all(a.outcome in set(Outcome) and a.finished_at is not None for a in closed)
            if running:
                # The API's list: the closed attempts, then the open one (no outcome), which only a job
                # being processed has.
                listed = self.run(lambda conn, job_id=row.id: queries.list_attempts(conn, job_id))
                assert [a.number for a in listed] == list(range(1, row.attempts + 1))
                assert [a.outcome is None for a in listed] == [False] * (row.attempts - 1) + [True]
                assert (listed[-1].started_at, listed[-1].finished_at) == (row.claimed_at, None)

        # A job seen SUCCESS or CANCELLED never changes again: not its row, not its attempts.
        by_id = {row.id: row for row in rows}
        for job_id, (row, closed) in self.terminal.items():
            assert (by_id.get(job_id), recorded.get(job_id, [])) == (row, closed), "a terminal job changed"
        for row in rows:
            if row.status in (Status.SUCCESS, Status.CANCELLED) and row.id not in self.terminal:
                self.terminal[row.id] = (row, recorded.get(row.id, []))


def run_machine(database: Database, **options: Any) -> None:
    machine = type("Machine", (LedgerMachine,), {"database": database})
    run_state_machine_as_test(
        machine,
        settings=settings(
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            **options,
        ),
    )


def test_random_walks_through_the_lifecycle_keep_the_ledger_consistent_on_sqlite(sqlite_db):
    run_machine(sqlite_db, max_examples=80, stateful_step_count=50)


def test_random_walks_through_the_lifecycle_keep_the_ledger_consistent_on_postgresql(postgres_db):
    run_machine(postgres_db, max_examples=15, stateful_step_count=20)
