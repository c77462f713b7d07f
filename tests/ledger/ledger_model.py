"""The state machine's model of the ledger: what each job should be, and the invariant checked after each step."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)
from sqlalchemy import func, select

from ledger import claims, intake, queries, transitions
from ledger.claims import EARLY_CLAIM_TOLERANCE
from ledger.database import Database
from ledger.intake import Intake, NewNotification
from ledger.schema import attempts, jobs
from ledger.states import FINISHED, WAITING, Outcome, Status
from tests.conftest import reset_ledger
from tests.ledger.conftest import T0

KEYS = ("a", "b", "c", "d")
SCOPES = ("", "key-1")
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


class LedgerModel(RuleBasedStateMachine):
    """The model of the ledger a random walk compares it with, the intake rule, the helpers of the other rules and the
    invariant checked after each step (the rules: tests/ledger/test_state_machine.py)."""

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
