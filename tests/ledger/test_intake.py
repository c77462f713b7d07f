"""Intake of an idempotency key on both databases: created, replayed or mismatched, in one statement."""

from __future__ import annotations

import threading
from datetime import UTC, timedelta, timezone

import pytest
from sqlalchemy import event, func, select

from ledger import claims, intake, maintenance
from ledger.intake import Intake
from ledger.schema import jobs
from ledger.states import Status
from tests.ledger.conftest import SECOND, T0, claim, job_row, notification


def accept(database, request, *, now=T0, dispatch_now=True):
    return database.run(lambda conn: intake.accept(conn, request, now=now, dispatch_now=dispatch_now))


def row_count(database) -> int:
    return database.run(lambda conn: conn.execute(select(func.count()).select_from(jobs)).scalar_one())


def test_a_new_key_creates_one_pending_job_due_now_with_its_first_dispatch(database):
    request = notification(
        "abc123", subject="Hi", metadata={"order": 7, "tags": ["a", "b"]}, max_attempts=4, recipient="a@b.example"
    )

    result = accept(database, request)

    assert result.outcome is Intake.CREATED
    assert (result.status, result.created_at, result.dispatch_seq, result.next_attempt_at) == (
        Status.PENDING,
        T0,
        1,
        T0,
    )
    row = job_row(database, result.job_id)
    assert row.status == "PENDING"
    assert (row.scope, row.idempotency_key, row.recipient, row.channel) == ("", "abc123", "a@b.example", "email")
    assert (row.message, row.subject, row.metadata) == (request.message, "Hi", {"order": 7, "tags": ["a", "b"]})
    assert (row.attempts, row.max_attempts, row.dispatch_seq) == (0, 4, 1)
    assert (row.next_attempt_at, row.created_at, row.updated_at) == (T0, T0, T0)
    assert (row.send_at, row.claimed_at, row.completed_at, row.worker, row.last_error) == (None,) * 5
    assert row.payload_hash == request.payload_hash()
    assert row_count(database) == 1


def test_the_same_key_with_the_same_payload_is_replayed_with_the_jobs_current_status(database):
    first = accept(database, notification("k"))
    claim(database, first.job_id, now=T0 + SECOND)

    again = accept(database, notification("k"), now=T0 + 2 * SECOND)

    assert again.outcome is Intake.REPLAYED
    assert (again.job_id, again.status, again.created_at) == (first.job_id, Status.PROCESSING, T0)
    assert again.dispatch_seq == 0
    assert row_count(database) == 1
    assert job_row(database, first.job_id).dispatch_seq == 1


def test_the_same_key_with_another_payload_is_a_mismatch_that_writes_nothing(database):
    first = accept(database, notification("k", message="one"))
    before = job_row(database, first.job_id)

    other = accept(database, notification("k", message="two"), now=T0 + SECOND)

    assert other.outcome is Intake.MISMATCH
    assert other.job_id == first.job_id
    assert row_count(database) == 1
    assert job_row(database, first.job_id) == before


def test_the_payload_hash_ignores_the_key_order_of_metadata_at_every_depth(database):
    one = notification("k", metadata={"a": 1, "b": {"x": 1, "y": [1, 2]}})
    two = notification("k", metadata={"b": {"y": [1, 2], "x": 1}, "a": 1})
    assert one.payload_hash() == two.payload_hash()

    first = accept(database, one)
    assert accept(database, two).outcome is Intake.REPLAYED
    assert accept(database, two).job_id == first.job_id


def test_the_payload_hash_compares_send_at_as_an_instant_whatever_its_time_zone(database):
    in_utc = notification("k", send_at=T0 + timedelta(hours=1))
    in_jakarta = notification("k", send_at=(T0 + timedelta(hours=1)).astimezone(timezone(timedelta(hours=7))))
    assert in_utc.payload_hash() == in_jakarta.payload_hash()

    first = accept(database, in_utc)
    again = accept(database, in_jakarta)
    assert (again.outcome, again.job_id) == (Intake.REPLAYED, first.job_id)


DIFFERENT = {
    "recipient": ("user@example.com", "other@example.com"),
    "channel": ("email", "log"),
    "message": ("hello", "hello "),
    "subject": (None, "a subject"),
    "subject-text": ("a subject", "A subject"),
    "metadata": (None, {}),
    "metadata-value": ({"a": 1}, {"a": 2}),
    "metadata-key": ({"a": 1}, {"b": 1}),
    "send_at": (None, T0 + timedelta(minutes=5)),
    "send_at-instant": (T0 + timedelta(minutes=5), T0 + timedelta(minutes=5, microseconds=1)),
}


@pytest.mark.parametrize("case", sorted(DIFFERENT))
def test_a_change_in_any_compared_field_is_a_mismatch(database, case):
    field = case.split("-")[0]
    before, after = DIFFERENT[case]
    one, two = notification("k", **{field: before}), notification("k", **{field: after})
    assert one.payload_hash() != two.payload_hash()

    first = accept(database, one)
    other = accept(database, two)

    assert (other.outcome, other.job_id) == (Intake.MISMATCH, first.job_id)
    assert row_count(database) == 1


def test_max_attempts_is_not_part_of_the_compared_payload_and_is_kept_from_the_first_request(database):
    first = accept(database, notification("k", max_attempts=2))
    again = accept(database, notification("k", max_attempts=9))

    assert (again.outcome, again.job_id) == (Intake.REPLAYED, first.job_id)
    assert job_row(database, first.job_id).max_attempts == 2


def test_the_same_key_in_two_scopes_makes_two_jobs(database):
    unscoped = accept(database, notification("k"))
    mine = accept(database, notification("k", scope="key-a"))
    theirs = accept(database, notification("k", scope="key-b", message="something else"))

    assert [r.outcome for r in (unscoped, mine, theirs)] == [Intake.CREATED] * 3
    assert len({unscoped.job_id, mine.job_id, theirs.job_id}) == 3
    assert accept(database, notification("k", scope="key-a")).job_id == mine.job_id
    assert accept(database, notification("k", scope="key-b")).outcome is Intake.MISMATCH
    assert job_row(database, mine.job_id).scope == "key-a"
    assert row_count(database) == 3


def test_a_job_not_dispatched_at_once_has_dispatch_seq_zero(database):
    result = accept(database, notification("k"), dispatch_now=False)

    assert result.outcome is Intake.CREATED
    assert result.dispatch_seq == 0
    assert job_row(database, result.job_id).dispatch_seq == 0


def test_a_job_scheduled_in_the_future_is_due_at_its_send_at(database):
    later = T0 + timedelta(hours=3)
    result = accept(database, notification("k", send_at=later), dispatch_now=False)

    row = job_row(database, result.job_id)
    assert result.next_attempt_at == later
    assert (row.next_attempt_at, row.send_at, row.status) == (later, later, "PENDING")


def test_a_send_at_in_the_past_makes_the_job_due_now(database):
    earlier = T0 - timedelta(days=2)
    result = accept(database, notification("k", send_at=earlier))

    row = job_row(database, result.job_id)
    assert result.next_attempt_at == T0
    assert (row.next_attempt_at, row.send_at) == (T0, earlier)


def test_a_send_at_in_another_time_zone_is_stored_as_the_same_instant_in_utc(database):
    in_jakarta = (T0 + timedelta(hours=1)).astimezone(timezone(timedelta(hours=7)))
    result = accept(database, notification("k", send_at=in_jakarta))

    stored = job_row(database, result.job_id).send_at
    assert stored == in_jakarta
    assert stored.utcoffset() == timedelta(0)
    assert stored.tzinfo is not None and stored.astimezone(UTC) == stored


def test_max_attempts_is_stored_per_job(database):
    low = accept(database, notification("low", max_attempts=1))
    high = accept(database, notification("high", max_attempts=12))

    assert job_row(database, low.job_id).max_attempts == 1
    assert job_row(database, high.job_id).max_attempts == 12


def test_concurrent_requests_with_one_key_create_exactly_one_job_on_postgresql(postgres_db):
    start = threading.Barrier(8)
    results, errors = [], []

    def producer() -> None:
        try:
            start.wait()
            results.append(accept(postgres_db, notification("contended"), now=T0))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=producer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert sorted(r.outcome for r in results) == sorted([Intake.CREATED] + [Intake.REPLAYED] * 7)
    assert len({r.job_id for r in results}) == 1
    assert row_count(postgres_db) == 1


def test_a_replay_that_races_the_pruner_deleting_its_old_job_makes_a_new_job_instead_of_crashing(database):
    # The key's job finished long ago; the pruner deletes it between intake's INSERT (which found the
    # conflict) and its SELECT of the existing row. The key is forgotten, so the request is simply new.
    old = accept(database, notification("k"), now=T0 - timedelta(days=3)).job_id
    claim(database, old, now=T0 - timedelta(days=3))
    database.run(lambda conn: claims.succeed(conn, old, 1, now=T0 - timedelta(days=3)))

    pruned = []

    def prune_before_reading_the_conflict(conn, cursor, statement, parameters, context, executemany):
        # Once: the race is one prune landing between the conflicting INSERT and the SELECT. (On PostgreSQL
        # the INSERT goes through the driver, unseen by SQLAlchemy's events; the SELECT is seen on both.)
        if statement.lstrip().upper().startswith("SELECT") and not pruned:
            pruned.append(database.run(lambda other: maintenance.prune(other, finished_before=T0, now=T0, limit=10)))

    def accept_while_pruning(conn):
        event.listen(conn, "before_cursor_execute", prune_before_reading_the_conflict)
        try:
            return intake.accept(conn, notification("k"), now=T0, dispatch_now=True)
        finally:
            event.remove(conn, "before_cursor_execute", prune_before_reading_the_conflict)

    result = database.run(accept_while_pruning)

    assert job_row(database, old) is None
    assert result.outcome is Intake.CREATED
    assert job_row(database, result.job_id).idempotency_key == "k"


def accept_many(database, *requests, now=T0, dispatch_now=True):
    batch = [intake.Accepting(request, now, dispatch_now) for request in requests]
    return database.run(lambda conn: intake.accept_many(conn, batch))


def test_a_batch_writes_every_new_key_in_one_statement_and_leaves_taken_keys_to_accept(database):
    taken = accept(database, notification("taken"))
    statements: list[str] = []
    engine = database._autocommit if database.dialect == "postgresql" else database.engine
    requests = [
        notification("a", metadata={"n": 1}),
        notification("taken"),
        notification("b", subject="S", send_at=T0 + timedelta(hours=1)),
        notification("a", metadata={"n": 1}),
    ]

    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        results = accept_many(database, *requests, now=T0 + SECOND)
    finally:
        event.remove(engine, "before_cursor_execute", listener)

    first, replayed, scheduled, duplicate = results
    if database.dialect == "postgresql":
        # One INSERT for the batch (through the driver, unseen by SQLAlchemy); the taken keys come back as None.
        assert statements == []
        assert replayed is None and duplicate is None
    else:
        assert replayed.outcome is Intake.REPLAYED and replayed.job_id == taken.job_id
        assert duplicate.outcome is Intake.REPLAYED and duplicate.job_id == first.job_id
    assert first.outcome is Intake.CREATED and scheduled.outcome is Intake.CREATED
    assert (first.dispatch_seq, first.next_attempt_at, first.created_at) == (1, T0 + SECOND, T0 + SECOND)
    assert scheduled.next_attempt_at == T0 + timedelta(hours=1)
    row = job_row(database, scheduled.job_id)
    assert (row.status, row.subject, row.metadata, row.send_at, row.attempts) == (
        "PENDING",
        "S",
        None,
        T0 + timedelta(hours=1),
        0,
    )
    assert (row.created_at, row.updated_at, row.payload_hash) == (T0 + SECOND, T0 + SECOND, requests[2].payload_hash())
    assert job_row(database, first.job_id).metadata == {"n": 1}
    assert row_count(database) == 3
    # What the batch left to `accept` is answered there as usual.
    assert accept(database, notification("a", metadata={"n": 2})).outcome is Intake.MISMATCH


def test_a_batch_with_a_value_the_column_cannot_hold_writes_nothing(postgres_db):
    too_long = notification("k" * 300)

    with pytest.raises(Exception, match="too long"):
        accept_many(postgres_db, notification("fine"), too_long)

    assert row_count(postgres_db) == 0
