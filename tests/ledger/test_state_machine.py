"""A random walk through the job lifecycle against a model: every transition, with current and stale
dispatches and attempts, an injected clock, and the ledger's invariants checked after each step."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    precondition,
    rule,
    run_state_machine_as_test,
)

from ledger import maintenance, transitions
from ledger.database import Database
from ledger.states import WAITING, Outcome, Status
from tests.ledger.ledger_model import ATTEMPT_OFFSETS, PROCESSING, LedgerModel

GRACE = timedelta(seconds=10)
HORIZON = timedelta(seconds=60)


class LedgerMachine(LedgerModel):
    """Drives the ledger's transitions at random on `database` and compares every answer with the model."""

    @precondition(LedgerModel.has_jobs)
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

    @precondition(LedgerModel.has_jobs)
    @rule(index=st.integers(0, 7), which=st.sampled_from(["current", "stale", "next"]))
    def claim(self, index, which):
        self.claim_job(self.pick(index, WAITING)[0], which)

    @precondition(LedgerModel.has_jobs)
    @rule(index=st.integers(0, 7), offset=ATTEMPT_OFFSETS)
    def succeed(self, index, offset):
        self.succeed_job(self.pick(index, PROCESSING)[0], offset)

    @precondition(LedgerModel.has_jobs)
    @rule(index=st.integers(0, 7), offset=ATTEMPT_OFFSETS, outcome=st.sampled_from(Outcome))
    def fail(self, index, offset, outcome):
        self.fail_job(self.pick(index, PROCESSING)[0], offset, outcome)

    @precondition(LedgerModel.has_jobs)
    @rule(index=st.integers(0, 7), offset=ATTEMPT_OFFSETS, delay=st.integers(0, 90), parked=st.booleans())
    def schedule_retry(self, index, offset, delay, parked):
        self.retry_job(self.pick(index, PROCESSING)[0], offset, delay, parked)

    @precondition(LedgerModel.has_jobs)
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

    @precondition(LedgerModel.has_jobs)
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

    @precondition(LedgerModel.has_jobs)
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

    @precondition(LedgerModel.has_jobs)
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

    @precondition(LedgerModel.has_jobs)
    @rule(index=st.integers(0, 7), own_scope=st.booleans())
    def cancel(self, index, own_scope):
        job_id, job = self.pick(index, WAITING)
        scope = job.scope if own_scope else "someone-else"
        done = self.run(lambda conn: transitions.cancel(conn, job_id, scope=scope, now=self.now))
        assert done == (job.status in WAITING and own_scope)
        if done:
            job.status = Status.CANCELLED

    @precondition(LedgerModel.has_jobs)
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

    @precondition(LedgerModel.has_jobs)
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
