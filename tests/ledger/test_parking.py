"""A retry due beyond the schedule horizon is parked in the ledger: no message can claim it until a reconciler pass
finds it coming due and gives it a dispatch no earlier message had."""

from __future__ import annotations

from datetime import timedelta

from ledger import maintenance, transitions
from ledger.states import Status
from tests.ledger.conftest import SECOND, T0, claim, job_row, submit

HOUR = timedelta(hours=1)


def park(database, job_id, attempt=1, *, due_at):
    return database.run(
        lambda conn: transitions.park_retry(conn, job_id, attempt, now=T0, due_at=due_at, error="receiver down")
    )


def candidates(database, now):
    found = database.run(
        lambda conn: maintenance.waiting_candidates(
            conn, overdue_before=now - 10 * SECOND, schedule_until=now + 30 * SECOND, after=None, limit=100
        )
    )
    return {job_id: seq for job_id, seq, _ in found}


def test_a_parked_retry_is_claimed_by_no_message_sent_before(database):
    job_id = submit(database, "parked")
    assert claim(database, job_id, now=T0) is not None

    assert park(database, job_id, due_at=T0 + HOUR)

    row = job_row(database, job_id)
    assert (row.status, row.dispatch_seq, row.next_attempt_at, row.last_error) == (
        Status.RETRY, -1, T0 + HOUR, "receiver down"
    )
    for seq in (1, 2):
        assert claim(database, job_id, now=T0 + 2 * HOUR, seq=seq) is None


def test_a_parked_retry_is_a_candidate_once_it_comes_within_the_horizon_and_is_then_dispatched_under_a_new_seq(
    database,
):
    job_id = submit(database, "parked")
    claim(database, job_id, now=T0)
    park(database, job_id, due_at=T0 + HOUR)

    assert job_id not in candidates(database, T0 + HOUR - 31 * SECOND)
    assert candidates(database, T0 + HOUR - 30 * SECOND)[job_id] == -1
    # However late the pass (the reconciler was down), it is still a candidate.
    assert candidates(database, T0 + 2 * HOUR)[job_id] == -1

    now = T0 + HOUR - 20 * SECOND
    [dispatch] = database.run(lambda conn: transitions.redispatch(conn, [(job_id, -1)], now=now))
    assert (dispatch.seq, dispatch.due_at) == (2, T0 + HOUR)
    assert database.run(lambda conn: transitions.redispatch(conn, [(job_id, -1)], now=now)) == []
    assert job_id not in candidates(database, T0 + HOUR)
    assert claim(database, job_id, now=T0 + HOUR, seq=1) is None
    assert claim(database, job_id, now=T0 + HOUR, seq=2).attempt == 2


def test_parking_takes_effect_only_for_the_attempt_held(database):
    job_id = submit(database, "held")
    claim(database, job_id, now=T0)

    assert not park(database, job_id, attempt=2, due_at=T0 + HOUR)
    assert park(database, job_id, attempt=1, due_at=T0 + HOUR)
    assert not park(database, job_id, attempt=1, due_at=T0 + HOUR)
    assert job_row(database, job_id).dispatch_seq == -1
