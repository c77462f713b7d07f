"""The table of states (`ledger.states.TRANSITIONS`) against what the ledger does: every transition from each of its
sources, and nothing else."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from ledger import transitions
from ledger.states import FINISHED, TRANSITIONS, Status, allowed
from tests.ledger.conftest import SECOND, T0, claim, history, job_in, job_row
from tests.ledger.steps import (
    VISIBILITY,
    cancel,
    expire,
    fail,
    manual_retry,
    redispatch,
    schedule_retry,
    succeed,
)

Operation = Callable[[Any, uuid.UUID, Any], Any]


def _op_claim(database, job_id, row):
    return claim(database, job_id, now=T0 + SECOND, seq=row.dispatch_seq)


def _op_succeed(database, job_id, row):
    return succeed(database, job_id, row.attempts, now=T0 + SECOND)


def _op_fail(database, job_id, row):
    return fail(database, job_id, row.attempts, now=T0 + SECOND)


def _op_schedule_retry(database, job_id, row):
    return schedule_retry(database, job_id, row.attempts, now=T0 + SECOND)


def _op_expire(database, job_id, row):
    return expire(database, [(job_id, row.attempts)], now=T0 + VISIBILITY * 2)


def _op_cancel(database, job_id, row):
    return cancel(database, job_id, now=T0 + SECOND)


def _op_manual_retry(database, job_id, row):
    return manual_retry(database, job_id, now=T0 + SECOND)


def _op_redispatch(database, job_id, row):
    return redispatch(database, [(job_id, row.dispatch_seq)], now=T0 + SECOND)


def _op_throttle(database, job_id, row):
    return database.run(
        lambda conn: transitions.throttle(
            conn, job_id, row.attempts, now=T0 + SECOND, due_at=T0 + 2 * SECOND, error="429", max_throttles=5
        )
    )


def _op_give_up_deferred(database, job_id, row):
    """Deferred (if waiting) at T0, then given up 100 s later with a most deferral of 10 s."""
    database.run(lambda conn: transitions.record_deferrals(conn, [(job_id, row.dispatch_seq, "circuit")], now=T0))
    return database.run(
        lambda conn: transitions.give_up_deferred(conn, now=T0 + 100 * SECOND, max_deferral=10, job_ids=[job_id])
    )


#: Every way the ledger changes a job, each with the job's current seq and attempt (the most permissive call).
OPERATIONS: dict[str, Operation] = {
    "claim": _op_claim,
    "succeed": _op_succeed,
    "fail": _op_fail,
    "schedule_retry": _op_schedule_retry,
    "expire": _op_expire,
    "cancel": _op_cancel,
    "manual_retry": _op_manual_retry,
    "redispatch": _op_redispatch,
    "throttle": _op_throttle,
    "give_up_deferred": _op_give_up_deferred,
}

#: Which operation (and with how many attempts allowed) performs each named transition of `TRANSITIONS`.
PERFORMS = {
    "claim": ("claim", 3),
    "succeed": ("succeed", 3),
    "schedule_retry": ("schedule_retry", 3),
    "fail": ("fail", 3),
    "expire_to_retry": ("expire", 3),
    "expire_to_failed": ("expire", 1),
    "cancel": ("cancel", 3),
    "manual_retry": ("manual_retry", 3),
    "throttle": ("throttle", 3),
    "give_up_deferred": ("give_up_deferred", 3),
}


def test_every_transition_of_the_table_is_exercised_here():
    assert set(PERFORMS) == set(TRANSITIONS)


@pytest.mark.parametrize("name", sorted(TRANSITIONS))
def test_each_transition_moves_a_job_from_each_of_its_sources_to_its_target(database, name):
    sources, target = TRANSITIONS[name]
    operation, max_attempts = PERFORMS[name]
    for n, source in enumerate(sorted(sources)):
        job_id = job_in(database, source, f"{name}-{n}", max_attempts=max_attempts)
        result = OPERATIONS[operation](database, job_id, job_row(database, job_id))
        assert result not in (None, False, [], ([], [])), (name, source)
        assert job_row(database, job_id).status == target, (name, source)


def _observed_moves(database) -> set[tuple[Status, Status]]:
    """Apply every operation to a job in every status (with 1 and with 3 attempts allowed); what changed."""
    moves = set()
    keys = itertools.count()
    for source, operation, max_attempts in itertools.product(Status, OPERATIONS, (1, 3)):
        job_id = job_in(database, source, f"job-{next(keys)}", max_attempts=max_attempts)
        OPERATIONS[operation](database, job_id, job_row(database, job_id))
        target = Status(job_row(database, job_id).status)
        if target != source:
            moves.add((source, target))
    return moves


def test_allowed_agrees_with_what_the_ledger_actually_does(database):
    observed = _observed_moves(database)

    declared = {(s, t) for s in Status for t in Status if s != t and allowed(s, t)}
    assert observed == declared
    assert not any(allowed(s, t) for s in (Status.SUCCESS, Status.CANCELLED) for t in Status)
    assert [t for t in Status if allowed(Status.FAILED, t)] == [Status.PENDING]


@pytest.mark.parametrize("status", [Status.SUCCESS, Status.CANCELLED])
def test_a_terminal_job_never_changes_whatever_is_asked(database, status):
    job_id = job_in(database, status, "k")
    before = job_row(database, job_id)
    history_before = history(database, job_id)

    for operation in OPERATIONS.values():
        operation(database, job_id, job_row(database, job_id))

    assert job_row(database, job_id) == before
    assert history(database, job_id) == history_before


def test_a_failed_job_leaves_failed_only_by_a_manual_retry(database):
    for name, operation in OPERATIONS.items():
        job_id = job_in(database, Status.FAILED, f"k-{name}")
        before = job_row(database, job_id)
        operation(database, job_id, before)
        after = job_row(database, job_id)
        if name == "manual_retry":
            assert after.status == "PENDING"
        else:
            assert after == before, name


def test_the_table_names_every_status_and_no_transition_leaves_a_terminal_state():
    statuses = {s for sources, target in TRANSITIONS.values() for s in (*sources, target)}
    assert statuses == set(Status)
    assert {Status.SUCCESS, Status.FAILED, Status.CANCELLED} == FINISHED
    leaving_finished = {name for name, (sources, _) in TRANSITIONS.items() if sources & FINISHED}
    assert leaving_finished == {"manual_retry"}
