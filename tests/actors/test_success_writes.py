"""A worker thread hands its success to the process's ledger batcher and returns without waiting for the write;
the success waits a moment for a claim on its way to share a statement with, and only then; a worker that stops
writes what it was handed before it exits."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from actors import ledger_batch
from actors.batching import Batcher
from actors.broker import Dispatcher, make_broker, redis_message_id
from actors.delivery import Delivery
from ledger import claims, queries
from ledger.states import Status
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from tests.actors.conftest import RecordingChannel, running_worker, submit, wait_for_status
from tests.actors.test_ledger_outage import OutageDuringDelivery
from tests.pg_cluster import Outage


class RecordedStatements:
    """`claims.succeed_and_claim` as the worker calls it, recorded; statements carrying successes wait for
    `release`."""

    def __init__(self) -> None:
        self.real = claims.succeed_and_claim
        self.calls: list[tuple[list[uuid.UUID], list[uuid.UUID]]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, conn: Any, attempts: list, dispatches: list, **kwargs: Any) -> Any:
        self.calls.append(([job_id for job_id, _ in attempts], [job_id for job_id, _ in dispatches]))
        if attempts:
            assert self.release.wait(20)
        return self.real(conn, attempts, dispatches, **kwargs)


@pytest.fixture
def statements(monkeypatch) -> RecordedStatements:
    recorded = RecordedStatements()
    monkeypatch.setattr(claims, "succeed_and_claim", recorded)
    return recorded


def make_delivery(settings, database) -> Delivery:
    return Delivery(
        database=database,
        dispatcher=Dispatcher(make_broker(settings.redis_url), settings.queue),
        channels={"log": RecordingChannel()},
        settings=settings,
    )


def deliver(delivery: Delivery, database, settings) -> uuid.UUID:
    """Run the actor's body in this thread, as a Dramatiq worker thread does, for a new job."""
    job_id = submit(database, None, settings)
    delivery(str(job_id), redis_message_id(Dispatch(job_id, 1, utcnow())))
    return job_id


def wait_until_delivered(channel: RecordingChannel, job_id: uuid.UUID, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while channel.count(job_id) == 0:
        assert time.monotonic() < deadline, f"job {job_id} was not delivered in {timeout}s"
        time.sleep(0.02)


def status(database, job_id: uuid.UUID) -> Status:
    return database.run(lambda conn: queries.get_job(conn, job_id, scope=None)).status


def test_the_thread_returns_before_its_success_is_written(make_settings, database, statements):
    settings = make_settings()
    delivery = make_delivery(settings, database)
    statements.release.clear()

    job_id = deliver(delivery, database, settings)  # returns although the success's statement is held

    assert status(database, job_id) is Status.PROCESSING
    statements.release.set()
    assert delivery.flush(timeout=10)
    assert status(database, job_id) is Status.SUCCESS


def test_a_success_shares_the_statement_of_the_claim_of_the_message_in_hand(
    make_settings, database, dispatcher, statements, monkeypatch
):
    monkeypatch.setattr(ledger_batch, "SUCCESS_LINGER", 10.0)  # so that the next claim surely comes in time
    settings = make_settings()
    # Both messages are in Redis before the worker starts: its one thread delivers the first while the second waits
    # in the worker's work queue, so the first's success waits for the second's claim.
    first = submit(database, dispatcher, settings)
    second = submit(database, dispatcher, settings)
    real_post = Batcher.post

    def post_and_dawdle(batcher: Batcher, request: Any) -> None:
        real_post(batcher, request)
        if getattr(request, "job", None) and request.job.id == first:
            time.sleep(0.3)  # the batcher has the first success in hand well before the second claim comes

    monkeypatch.setattr(Batcher, "post", post_and_dawdle)

    with running_worker(settings, database, channels={"log": RecordingChannel()}, threads=1):
        for job_id in (first, second):
            assert wait_for_status(database, job_id).status is Status.SUCCESS

    assert statements.calls == [([], [first]), ([first], [second]), ([second], [])]


def test_a_success_with_no_claim_on_its_way_is_written_at_once(make_settings, database, statements, monkeypatch):
    monkeypatch.setattr(ledger_batch, "SUCCESS_LINGER", 600.0)  # a success lingering for nothing would stay
    settings = make_settings()
    delivery = make_delivery(settings, database)

    job_id = deliver(delivery, database, settings)  # no message in hand, none in a work queue

    assert wait_for_status(database, job_id).status is Status.SUCCESS
    assert statements.calls == [([], [job_id]), ([job_id], [])]


def test_a_stopping_worker_writes_the_successes_it_was_handed_before_it_exits(
    make_private_settings, private_ledger, private_cluster, dispatcher
):
    settings = make_private_settings()
    outage = Outage(private_cluster, down_for=1.5)
    channel = OutageDuringDelivery(outage)
    job_id = submit(private_ledger, dispatcher, settings)

    with running_worker(settings, private_ledger, channels={"log": channel}, threads=1):
        wait_until_delivered(channel, job_id)
    # The worker stopped while the write was riding out the outage, and waited for it: the success is in the ledger
    # the moment the worker has stopped. (One that did not wait would leave the job PROCESSING, or the ledger still
    # down, at this read; whether the outage's own thread has yet noted the server back is another matter.)
    job = private_ledger.run(lambda conn: queries.get_job(conn, job_id, scope=None))
    assert (job.status, job.attempts) == (Status.SUCCESS, 1)
    assert channel.count(job_id) == 1


def test_a_job_that_comes_while_a_success_rides_out_an_outage_is_delivered_once_after_it(
    make_private_settings, private_ledger, private_cluster, dispatcher
):
    settings = make_private_settings()
    outage = Outage(private_cluster, down_for=1.5)
    channel = OutageDuringDelivery(outage)
    first = submit(private_ledger, dispatcher, settings)
    second = submit(private_ledger, None, settings)  # recorded now; its message is sent during the outage

    with running_worker(settings, private_ledger, channels={"log": channel}, threads=2):
        wait_until_delivered(channel, first)
        # Its claim waits behind the success, or meets the outage and comes back later.
        dispatcher.send([Dispatch(second, 1, utcnow())], now=utcnow())
        outage.wait_over()
        for job_id in (first, second):
            assert wait_for_status(private_ledger, job_id, timeout=20).status is Status.SUCCESS
    assert (channel.count(first), channel.count(second)) == (1, 1)
