"""A message id the ledger could not take never reaches it, and a request the database refuses anyway fails alone:
the successes and claims that shared its statement are written."""

from __future__ import annotations

import uuid

import pytest

from actors.broker import Dispatcher, make_broker, parse_redis_message_id, redis_message_id
from actors.delivery import Delivery
from actors.ledger_batch import Delivered, JobClaim
from ledger import claims, queries
from ledger.claims import ClaimedJob
from ledger.database import Database
from ledger.states import Status
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from tests.actors.conftest import RecordingChannel, submit

JOB = uuid.UUID("3827e2bd-4882-4c95-975c-b12342a809b5")


@pytest.fixture
def database(postgres_db: Database) -> Database:
    """PostgreSQL only: its INTEGER refuses what SQLite would store."""
    return postgres_db


def test_the_id_a_dispatch_is_sent_under_parses_back_to_it():
    for seq in (1, 2, 2**31 - 1):
        assert parse_redis_message_id(redis_message_id(Dispatch(JOB, seq, utcnow()))) == (JOB, seq)


@pytest.mark.parametrize(
    "rid",
    [
        f"{JOB}.0",
        f"{JOB}.-1",
        f"{JOB}.2147483648",
        f"{JOB}.99999999999999999999",
        f"{JOB}.01",
        f"{JOB}.+1",
        f"{JOB}. 1",
        f"{JOB}.1_0",
        f"{JOB}.\u0661",  # an Arabic-Indic digit one, which int() takes
        f"{JOB}.",
        f"{JOB}",
        ".1",
        f"{{{JOB}}}.1",
        f"{str(JOB).upper()}.1",
        f"{JOB.hex}.1",
        f"urn:uuid:{JOB}.1",
    ],
)
def test_a_message_id_that_is_not_a_canonical_job_id_and_a_seq_the_ledger_holds_is_refused(rid):
    with pytest.raises(ValueError):
        parse_redis_message_id(rid)


def test_a_claim_the_database_refuses_fails_alone_and_the_success_and_claim_sharing_its_batch_are_written(
    make_settings, database
):
    settings = make_settings()
    delivery = Delivery(
        database=database,
        dispatcher=Dispatcher(make_broker(settings.redis_url), settings.queue),
        channels={"log": RecordingChannel()},
        settings=settings,
    )
    delivered, claimable, refused = (submit(database, None, settings) for _ in range(3))
    held = database.run(lambda conn: claims.claim(conn, delivered, 1, now=utcnow(), worker="w"))
    assert held is not None

    # One batch as the ledger batcher hands it over: a success, a good claim, and a claim whose seq overflows the
    # ledger's INTEGER (as no message may carry since the id is checked, but any value the database refuses).
    results = delivery.batch.write([Delivered(held, utcnow(), 1.0), JobClaim(claimable, 1), JobClaim(refused, 2**31)])

    assert results[0] is True
    assert isinstance(results[1], ClaimedJob) and results[1].id == claimable
    assert isinstance(results[2], Exception)
    ids = (delivered, claimable, refused)
    jobs = [database.run(lambda conn, j=j: queries.get_job(conn, j, scope=None)) for j in ids]
    assert [job.status for job in jobs] == [Status.SUCCESS, Status.PROCESSING, Status.PENDING]


def test_two_copies_of_one_message_in_a_refused_batch_claim_its_attempt_once(make_settings, database):
    settings = make_settings()
    delivery = Delivery(
        database=database,
        dispatcher=Dispatcher(make_broker(settings.redis_url), settings.queue),
        channels={"log": RecordingChannel()},
        settings=settings,
    )
    duplicated, refused = (submit(database, None, settings) for _ in range(2))

    # A message sent twice under one id, both copies claiming in the batch a refused request sends one by one
    results = delivery.batch.write([JobClaim(duplicated, 1), JobClaim(duplicated, 1), JobClaim(refused, 2**31)])

    assert [isinstance(result, ClaimedJob) for result in results[:2]].count(True) == 1
    assert results[:2].count(None) == 1
    job = database.run(lambda conn: queries.get_job(conn, duplicated, scope=None))
    assert (job.status, job.attempts) == (Status.PROCESSING, 1)
