"""Intake of a producer's batch on both databases: each request answered as if the batch's requests had come one
after the other, in a few statements whatever the batch's size."""

from __future__ import annotations

import gc
import threading
import time

from sqlalchemy import event, func, select

from ledger import batch_insert, intake
from ledger.intake import Accepting, Intake
from ledger.schema import jobs
from ledger.states import Status
from ledger.transitions import Dispatch
from tests.ledger.conftest import SECOND, T0, claim, notification


def accept_batch(database, *requests, now=T0):
    batch = [Accepting(request, now, True) for request in requests]
    return database.run(lambda conn: intake.accept_batch(conn, batch))


def row_count(database) -> int:
    return database.run(lambda conn: conn.execute(select(func.count()).select_from(jobs)).scalar_one())


def test_every_new_key_of_a_batch_makes_its_job_and_the_results_keep_the_batchs_order(database):
    results = accept_batch(database, *(notification(f"k{i}") for i in range(5)))

    assert [r.outcome for r in results] == [Intake.CREATED] * 5
    assert len({r.job_id for r in results}) == 5
    assert all((r.status, r.created_at, r.dispatch_seq) == (Status.PENDING, T0, 1) for r in results)
    keys = dict(database.run(lambda conn: conn.execute(select(jobs.c.id, jobs.c.idempotency_key)).all()))
    assert [keys[r.job_id] for r in results] == [f"k{i}" for i in range(5)]


def test_keys_recorded_before_the_batch_are_replays_or_mismatches_with_the_jobs_current_status(database):
    (earlier, other) = accept_batch(database, notification("same"), notification("other", message="one"))
    claim(database, earlier.job_id, now=T0 + SECOND)

    results = accept_batch(
        database, notification("new"), notification("same"), notification("other", message="two"), now=T0 + 2 * SECOND
    )

    assert [r.outcome for r in results] == [Intake.CREATED, Intake.REPLAYED, Intake.MISMATCH]
    assert (results[1].job_id, results[1].status, results[1].created_at) == (earlier.job_id, Status.PROCESSING, T0)
    assert results[2].job_id == other.job_id
    assert (results[1].dispatch_seq, results[2].dispatch_seq) == (0, 0)
    assert row_count(database) == 3


def test_a_key_repeated_in_a_batch_is_a_replay_of_its_first_occurrence_or_a_mismatch(database):
    results = accept_batch(
        database,
        notification("k", metadata={"a": 1, "b": 2}),
        notification("k", metadata={"b": 2, "a": 1}),
        notification("k", metadata={"a": 2}),
    )

    created, replayed, mismatched = results
    assert [r.outcome for r in results] == [Intake.CREATED, Intake.REPLAYED, Intake.MISMATCH]
    assert replayed.job_id == mismatched.job_id == created.job_id
    assert (replayed.status, replayed.created_at, replayed.dispatch_seq) == (Status.PENDING, T0, 0)
    assert row_count(database) == 1


def test_a_repeated_key_whose_first_occurrence_mismatched_is_compared_with_the_recorded_job(database):
    (recorded,) = accept_batch(database, notification("k", message="recorded"))

    results = accept_batch(
        database,
        notification("k", message="other"),
        notification("k", message="recorded"),
        notification("k", message="other"),
    )

    assert [r.outcome for r in results] == [Intake.MISMATCH, Intake.REPLAYED, Intake.MISMATCH]
    assert {r.job_id for r in results} == {recorded.job_id}
    assert row_count(database) == 1


def test_the_same_key_in_two_scopes_is_two_jobs(database):
    (first,) = accept_batch(database, notification("k", scope="producer-a"))
    (second,) = accept_batch(database, notification("k", scope="producer-b"))

    assert (first.outcome, second.outcome) == (Intake.CREATED, Intake.CREATED)
    assert first.job_id != second.job_id


def test_on_postgresql_a_batch_is_one_insert_and_one_read_of_the_keys_taken_before(postgres_db):
    accept_batch(postgres_db, *(notification(f"taken-{i}") for i in range(3)))
    statements: list[str] = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(postgres_db._autocommit, "before_cursor_execute", listener)
    try:
        results = accept_batch(
            postgres_db, *(notification(f"taken-{i}") for i in range(3)), *(notification(f"new-{i}") for i in range(50))
        )
    finally:
        event.remove(postgres_db._autocommit, "before_cursor_execute", listener)

    assert [r.outcome for r in results] == [Intake.REPLAYED] * 3 + [Intake.CREATED] * 50
    # The INSERT goes through the driver (unseen by SQLAlchemy); the one statement seen reads the taken keys.
    assert len(statements) == 1 and statements[0].lstrip().upper().startswith("SELECT"), statements
    assert row_count(postgres_db) == 53


def test_on_postgresql_a_batch_statement_parses_its_rows_once(postgres_db):
    """Its rows are read twice (inserted, and probed for a retried statement's own rows) but parsed once: parsing
    the JSON was a quarter of PostgreSQL's CPU per row when each read parsed it again."""
    batch = [Accepting(notification(f"k{i}"), T0, True) for i in range(3)]

    def plan(conn) -> list[dict]:
        driver = conn.connection.driver_connection
        params = {**batch_insert.INSERT_FREE_KEYS._constants, **batch_insert.parameters(batch)}
        ((found,),) = driver.execute(f"EXPLAIN (FORMAT JSON) {batch_insert.INSERT_FREE_KEYS.sql}", params).fetchall()
        return found

    def nodes(node: dict) -> list[dict]:
        return [node, *(n for child in node.get("Plans", []) for n in nodes(child))]

    parses = [n for n in nodes(postgres_db.run(plan)[0]["Plan"]) if n.get("Function Name") == "json_to_recordset"]
    assert len(parses) == 1, parses


def test_a_batchs_per_item_objects_are_left_out_of_the_garbage_collectors_passes(database):
    """Thousands of them live through a batch: tracked, they made the collector's passes cost as much as their
    building (bench/README.md, 2026-12-03 20:07). None can be part of a cycle."""
    items = [Accepting(notification(f"k{i}", metadata={"tags": ["a"]}), T0, True) for i in range(3)]
    results = database.run(lambda conn: intake.accept_batch(conn, items))

    rows = [batch_insert._sent_row(item, "", T0) for item in items]
    dispatches = [Dispatch(r.job_id, r.dispatch_seq, T0, r.destination) for r in results]
    objects = [*items, *(item.request for item in items), *rows, *results, *dispatches]
    assert not any(gc.is_tracked(o) for o in objects)


def test_on_postgresql_the_batch_statement_answers_only_with_the_rows_whose_key_another_job_holds(postgres_db):
    """A batch of new keys reads nothing back: reading back an id per row cost more client CPU than the rows."""
    accept_batch(postgres_db, notification("taken"))
    new = [Accepting(notification(f"new-{i}"), T0, True) for i in range(3)]
    again = [Accepting(notification("taken"), T0, True), Accepting(notification("new-0"), T0, True)]

    def answered(batch: list[Accepting]) -> list:
        def run(conn) -> list:
            driver = conn.connection.driver_connection
            params = batch_insert.parameters(batch)
            return [job_id for (job_id,) in batch_insert.INSERT_FREE_KEYS.execute(driver, params)]

        return postgres_db.run(run)

    assert answered(new) == []
    assert answered(new) == []  # its own rows, written by an earlier run of the statement
    assert sorted(answered(again)) == sorted(item.job_id for item in again)


def test_on_postgresql_a_batch_writes_each_row_as_a_single_accept_would(postgres_db):
    """A batch's rows carry only what differs from the batch's scope and instant and what is not NULL; the statement
    fills in the rest. Every column of every row must still be the one the single statement writes."""
    later = T0 + 60 * SECOND
    requests = [
        (notification("plain"), T0, True),
        (notification("full", subject="Hi", metadata={"a": [1, "x"], "b": None}, callback_url="https://cb.example/h",
                      callback_destination="webhook:cb.example:443"), T0, True),
        (notification("routed", channel="webhook", destination="webhook:a.example:443"), T0, True),
        (notification("named", destination="email"), T0, True),
        (notification("future", send_at=T0 + 3600 * SECOND), T0, False),
        (notification("past", send_at=T0 - 5 * SECOND), T0, True),
        (notification("theirs", scope="other-key"), T0, True),
        (notification("later", send_at=later - SECOND), later, True),
        (notification("empty-metadata", metadata={}), T0, True),
    ]  # fmt: skip
    batch = [Accepting(request, now, dispatch_now) for request, now, dispatch_now in requests]
    singles = [
        Accepting(notification(f"single-{item.request.idempotency_key}", **_fields(item.request)), item.now,
                  item.dispatch_now)
        for item in batch
    ]  # fmt: skip

    results = postgres_db.run(lambda conn: intake.accept_many(conn, batch))
    alone = [
        postgres_db.run(lambda conn, item=item: intake.accept(conn, item.request, now=item.now,
                                                             dispatch_now=item.dispatch_now, job_id=item.job_id))
        for item in singles
    ]  # fmt: skip

    def row(job_id) -> dict:
        found = postgres_db.run(lambda conn: conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().one())
        skipped = {"id", "idempotency_key", "payload_hash", "created_xid"}
        return {name: value for name, value in found.items() if name not in skipped}

    for item, result, single in zip(batch, results, alone, strict=True):
        assert result is not None and result.outcome is Intake.CREATED
        assert (result.created_at, result.dispatch_seq, result.next_attempt_at, result.destination) == (
            single.created_at,
            single.dispatch_seq,
            single.next_attempt_at,
            single.destination,
        ), item.request.idempotency_key
        assert row(result.job_id) == row(single.job_id), item.request.idempotency_key
    digests = postgres_db.run(lambda conn: dict(conn.execute(select(jobs.c.id, jobs.c.payload_hash)).all()))
    assert [digests[r.job_id] for r in results] == [item.request.payload_hash() for item in batch]


def _fields(request) -> dict:
    return {name: getattr(request, name) for name in request.__struct_fields__ if name != "idempotency_key"}


def test_a_batch_retried_after_its_first_run_committed_is_answered_as_created(database):
    """The statement whose answer was lost with its connection is run again: its rows, there under their own ids,
    are its own jobs, not replays."""
    batch = [Accepting(notification(f"k{i}"), T0, True) for i in range(3)]
    first = database.run(lambda conn: intake.accept_batch(conn, batch))

    again = database.run(lambda conn: intake.accept_batch(conn, batch))

    assert [r.outcome for r in again] == [Intake.CREATED] * 3
    assert [r.job_id for r in again] == [r.job_id for r in first] == [item.job_id for item in batch]
    assert row_count(database) == 3


def test_a_batch_with_a_taken_key_in_the_callers_transaction_leaves_it_usable(database):
    """A taken key is a normal result, not an error that would abort the caller's transaction."""
    (taken,) = accept_batch(database, notification("taken"))
    batch = [Accepting(notification("taken"), T0, True), Accepting(notification("new"), T0, True)]

    def in_transaction(conn) -> tuple[list, int]:
        results = intake.accept_batch(conn, batch)
        return results, conn.execute(select(func.count()).select_from(jobs)).scalar_one()

    results, rows = database.run(in_transaction, transaction=True)

    assert [r.outcome for r in results] == [Intake.REPLAYED, Intake.CREATED]
    assert results[0].job_id == taken.job_id
    assert rows == 2 == row_count(database)


def test_on_postgresql_a_batch_takes_its_keys_in_key_order_whatever_their_order_in_the_request(postgres_db):
    """Statements that take the same keys in one order cannot deadlock. A batch (b, a) whose key "a" another
    transaction holds, uncommitted, waits there before it takes "b": that transaction can still take "b"."""
    with postgres_db.engine.connect() as holder:
        holder.begin()
        held_a = intake.accept(holder, notification("a"), now=T0, dispatch_now=True)
        holder_pid = holder.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        answers: list = []
        batch = threading.Thread(target=lambda: answers.append(accept_batch(postgres_db, notification("b"),
                                                                             notification("a"))))  # fmt: skip
        batch.start()
        _wait_until_blocked_by(postgres_db, holder_pid)

        # Had the batch taken "b" first, this would wait for it while it waits for us (lock_timeout: an error, not
        # a wait, before the deadlock detector's second).
        holder.exec_driver_sql("SET LOCAL lock_timeout = '500ms'")
        held_b = intake.accept(holder, notification("b"), now=T0, dispatch_now=True)
        holder.commit()
        batch.join()

    assert (held_a.outcome, held_b.outcome) == (Intake.CREATED, Intake.CREATED)
    (results,) = answers
    assert [(r.outcome, r.job_id) for r in results] == [
        (Intake.REPLAYED, held_b.job_id),
        (Intake.REPLAYED, held_a.job_id),
    ]


def _wait_until_blocked_by(database, pid: int) -> None:
    blocked = "SELECT count(*) FROM pg_stat_activity WHERE %(pid)s = ANY(pg_blocking_pids(pid))"
    for _ in range(500):
        if database.run(lambda conn: conn.exec_driver_sql(blocked, {"pid": pid}).scalar_one()):
            return
        time.sleep(0.01)
    raise AssertionError("the batch never waited for the key held by the other transaction")
