"""Statements that `Database.run` retries after their connection died between the commit and the answer: the
retry recognises what the lost run committed, as a real network failure (`tests/pg_proxy.py`) leaves it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from ledger import claims, intake
from ledger.database import Database
from ledger.intake import Accepting, Intake
from ledger.states import Status
from ledger.timestamps import utcnow
from tests.ledger.conftest import T0, job_row, notification, submit
from tests.pg_proxy import LosingProxy


@pytest.fixture
def proxy(postgres_server_url: str) -> Iterator[LosingProxy]:
    proxy = LosingProxy(postgres_server_url)
    yield proxy
    proxy.close()


@pytest.fixture
def lossy(postgres_db: Database, proxy: LosingProxy) -> Iterator[Database]:
    """The test's ledger, reached through the proxy; its kept and pooled connections already made."""
    database = Database(proxy.url)
    database.run(lambda conn: conn.exec_driver_sql("SELECT 1").scalar(), kept=True)
    database.run(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())
    yield database
    database.dispose()


def test_a_claim_whose_answer_was_lost_is_returned_by_its_retry_counting_the_attempt_once(postgres_db, proxy, lossy):
    job_id = submit(postgres_db, "claimed", now=utcnow())
    token = uuid.uuid4()

    proxy.arm()
    claimed = lossy.run(
        lambda conn: claims.claim_many(conn, [(job_id, 1)], now=utcnow(), worker="w", token=token), kept=True
    )

    assert proxy.lost.is_set()
    assert [(job.id, job.attempt) for job in claimed if job is not None] == [(job_id, 1)]
    row = job_row(postgres_db, job_id)
    assert (row.status, row.attempts, row.claim_token) == (Status.PROCESSING, 1, token)


def test_a_claim_under_another_token_still_finds_the_job_taken(postgres_db, lossy):
    job_id = submit(postgres_db, "taken", now=utcnow())
    first = lossy.run(lambda conn: claims.claim_many(conn, [(job_id, 1)], now=utcnow(), worker="w"), kept=True)
    assert first[0] is not None

    # The same dispatch again (a duplicate message), claimed by another statement: nothing to return.
    again = lossy.run(
        lambda conn: claims.claim_many(conn, [(job_id, 1)], now=utcnow(), worker="w", token=uuid.uuid4()),
        kept=True,
    )

    assert again == [None]
    assert job_row(postgres_db, job_id).attempts == 1


def test_a_success_and_claim_whose_answer_was_lost_returns_its_claims_once(postgres_db, proxy, lossy):
    done, waiting = submit(postgres_db, "done", now=utcnow()), submit(postgres_db, "waiting", now=utcnow())
    assert lossy.run(lambda conn: claims.claim(conn, done, 1, now=utcnow(), worker="w"), kept=True) is not None
    token = uuid.uuid4()

    proxy.arm()
    _, claimed = lossy.run(
        lambda conn: claims.succeed_and_claim(
            conn, [(done, 1)], [(waiting, 1)], now=utcnow(), worker="w", token=token
        ),
        kept=True,
    )

    assert proxy.lost.is_set()
    assert [(job.id, job.attempt) for job in claimed if job is not None] == [(waiting, 1)]
    assert (job_row(postgres_db, waiting).attempts, job_row(postgres_db, done).status) == (1, Status.SUCCESS)


def test_an_intake_whose_answer_was_lost_is_created_by_its_retry_under_the_same_id(postgres_db, proxy, lossy):
    item = Accepting(notification("lost-answer"), T0, True)

    proxy.arm()
    result = lossy.run(
        lambda conn: intake.accept(conn, item.request, now=T0, dispatch_now=True, job_id=item.job_id)
    )

    assert proxy.lost.is_set()
    assert (result.outcome, result.job_id, result.dispatch_seq) == (Intake.CREATED, item.job_id, 1)


def test_a_batch_intake_whose_answer_was_lost_is_created_by_its_retry(postgres_db, proxy, lossy):
    batch = [Accepting(notification(f"batch-{n}"), T0, True) for n in range(3)]

    proxy.arm()
    results = lossy.run(lambda conn: intake.accept_many(conn, batch), kept=True)

    assert proxy.lost.is_set()
    assert [(r.outcome, r.job_id) for r in results if r is not None] == [(Intake.CREATED, i.job_id) for i in batch]


def test_a_producers_batch_whose_answer_was_lost_is_created_by_its_retry(postgres_db, proxy, lossy):
    """Its statement committed; the retry's skips the keys and finds the rows there under their own ids."""
    batch = [Accepting(notification(f"batch-{n}"), T0, True) for n in range(3)]

    proxy.arm()
    results = lossy.run(lambda conn: intake.accept_batch(conn, batch))

    assert proxy.lost.is_set()
    assert [(r.outcome, r.job_id) for r in results] == [(Intake.CREATED, i.job_id) for i in batch]


def test_a_request_whose_key_another_request_took_is_still_a_replay(postgres_db):
    first = postgres_db.run(lambda conn: intake.accept(conn, notification("k"), now=T0, dispatch_now=True))

    again = postgres_db.run(
        lambda conn: intake.accept(conn, notification("k"), now=T0, dispatch_now=True, job_id=uuid.uuid4())
    )

    assert (again.outcome, again.job_id) == (Intake.REPLAYED, first.job_id)


def test_a_claim_run_again_under_its_token_returns_what_it_claimed_on_both_databases(database):
    now = utcnow()
    first, second = submit(database, "first", now=now), submit(database, "second", now=now)
    token = uuid.uuid4()

    def claim_both(conn):
        return claims.claim_many(conn, [(first, 1), (second, 1)], now=utcnow(), worker="w", token=token)

    assert [job.attempt for job in database.run(claim_both)] == [1, 1]
    assert [job.attempt for job in database.run(claim_both)] == [1, 1]
    assert [job_row(database, job_id).attempts for job_id in (first, second)] == [1, 1]
