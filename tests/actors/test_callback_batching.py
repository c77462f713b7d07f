"""Status callbacks share the worker's ledger batches as jobs do: callbacks whose claims arrive while a batch is in the
database are claimed, and admitted by their destination's gate, together in the next one; their successes are
written in shared statements too. Real PostgreSQL / SQLite, Redis and a local receiver; the worker's threads are
this test's threads calling the actor's body."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import redis

from actors.broker import Dispatcher, make_broker
from actors.callbacks import CallbackDelivery, callback_message_id
from actors.channels.webhook import WebhookChannel
from actors.delivery import Delivery
from actors.flow.gate import DEFAULT_PREFIX
from actors.flow.shares import KNOWN_AFTER
from ledger import callbacks, claims, transitions
from ledger.states import Status
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from tests.actors.conftest import RecordingChannel, submit
from tests.flow_checks import gate_of
from tests.webhook_sink import webhook_sink

CALLBACKS = 8


class HeldStatements:
    """`callbacks.succeed_and_claim` as the worker calls it, recorded as (successes, claims) per statement; the
    first statement waits until the other claims are queued behind it in the batcher."""

    def __init__(self, delivery: Delivery) -> None:
        self.real = callbacks.succeed_and_claim
        self.delivery = delivery
        self.calls: list[tuple[int, int]] = []
        #: Set when the first statement has begun: the claims that come after it cannot be in it.
        self.first_begun = threading.Event()

    def __call__(self, conn: Any, attempts: list, dispatches: list, **kwargs: Any) -> Any:
        if not self.calls:
            self.first_begun.set()
            deadline = time.monotonic() + 20
            while self.delivery.ledger._waiting.qsize() < CALLBACKS - len(dispatches):
                assert time.monotonic() < deadline, "the other callbacks' claims never queued up"
                time.sleep(0.01)
        self.calls.append((len(attempts), len(dispatches)))
        return self.real(conn, attempts, dispatches, **kwargs)


class RidingDeliveries:
    """`claims.succeed_and_claim` as the worker calls it: how many callbacks' deliveries each statement carried."""

    def __init__(self) -> None:
        self.real = claims.succeed_and_claim
        self.delivered: list[int] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.delivered.append(len(kwargs.get("delivered", ())))
        return self.real(*args, **kwargs)


class CountedGate:
    """The gate's round trips that carried admissions, with how many each."""

    def __init__(self, gate: Any) -> None:
        self.real = gate.batch
        self.admits: list[int] = []

    def __call__(self, admits: list, releases: list, **kwargs: Any) -> Any:
        if admits:
            self.admits.append(len(admits))
        return self.real(admits, releases, **kwargs)


def worker(settings, database, threads: int = CALLBACKS) -> tuple[Delivery, CallbackDelivery]:
    """A worker process's delivery and callback actors' bodies, sharing its ledger batcher."""
    dispatcher = Dispatcher(make_broker(settings.redis_url), settings.queue)
    delivery = Delivery(database=database, dispatcher=dispatcher, channels={"log": RecordingChannel()},
                        settings=settings, threads=threads)  # fmt: skip
    callback_delivery = CallbackDelivery(
        database=database, dispatcher=dispatcher, webhook=WebhookChannel(settings.channels), settings=settings,
        flow=delivery.flow, ledger=delivery.ledger, armed=delivery.armed,
    )  # fmt: skip
    return delivery, callback_delivery


def finished_with_callbacks(database, settings, url: str, destination: str, count: int) -> list[Dispatch]:
    """`count` jobs with a callback to `url`, cancelled: their callbacks armed and dispatched."""
    job_ids = [submit(database, None, settings, callback_url=url, callback_destination=destination)
               for _ in range(count)]  # fmt: skip
    now = utcnow()
    for job_id in job_ids:
        assert database.run(lambda conn, job_id=job_id: transitions.cancel(conn, job_id, scope="", now=now))
    return database.run(lambda conn: callbacks.dispatch_armed(conn, job_ids, now=now))


def test_callbacks_claimed_meanwhile_share_one_statement_and_one_gate_round_trip(
    make_settings, database, monkeypatch
) -> None:
    settings = make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="true")
    delivery, callback_delivery = worker(settings, database)
    assert delivery.flow is not None
    with webhook_sink() as sink, gate_of(settings.redis_url, settings.queue) as (_, used):
        destination = f"webhook:127.0.0.1:{urlsplit(sink.url).port}"
        used.append(destination)
        # A destination this process has seen answer fast (until then it holds one attempt in flight at a time).
        for dispatch in finished_with_callbacks(database, settings, sink.url, destination, KNOWN_AFTER):
            callback_delivery(callback_message_id(dispatch), destination)
        assert delivery.flush(20)
        statements = HeldStatements(delivery)
        monkeypatch.setattr(callbacks, "succeed_and_claim", statements)
        riding = RidingDeliveries()
        monkeypatch.setattr(claims, "succeed_and_claim", riding)
        gate = CountedGate(delivery.flow.gate)
        monkeypatch.setattr(delivery.flow.gate, "batch", gate)
        dispatches = finished_with_callbacks(database, settings, sink.url, destination, CALLBACKS)
        threads = [
            threading.Thread(target=callback_delivery, args=(callback_message_id(d), destination)) for d in dispatches
        ]
        # One claim first, the others once its statement has begun: they can only queue behind it (started together,
        # all of them could reach the batcher before it takes the first).
        threads[0].start()
        assert statements.first_begun.wait(20)
        for thread in threads[1:]:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert delivery.flush(20)
        job_ids = [d.job_id for d in dispatches]
        views = database.run(lambda conn: callbacks.callback_views(conn, job_ids))
    received = [r.headers["webhook-id"] for r in sink.requests()][KNOWN_AFTER:]
    assert sorted(received) == sorted(f"{job_id}.CANCELLED" for job_id in job_ids)
    assert {(v.status, v.attempts) for v in views.values()} == {(Status.SUCCESS, 1)}
    # The first batch's claims went together; all that queued behind it, in one statement and one gate round trip.
    claimed = [claims for _, claims in statements.calls if claims]
    assert (len(claimed), sum(claimed)) == (2, CALLBACKS)
    assert (len(gate.admits), sum(gate.admits)) == (2, CALLBACKS)
    # Every success was written once: in the callbacks' statement of a batch with claims of callbacks' messages, else
    # in the jobs' statement. How many shared a statement depends on when the POSTs finished (on a loaded machine each
    # may go alone), so that is measured in bench/README.md, not asserted here.
    assert sum(successes for successes, _ in statements.calls) + sum(riding.delivered) == CALLBACKS


def test_a_stale_callback_message_in_a_batch_gets_nothing_and_gives_its_admission_back(
    make_settings, database
) -> None:
    settings = make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="true")
    delivery, callback_delivery = worker(settings, database)
    client = redis.Redis.from_url(settings.redis_url)
    with webhook_sink() as sink, gate_of(settings.redis_url, settings.queue) as (_, used):
        destination = f"webhook:127.0.0.1:{urlsplit(sink.url).port}"
        used.append(destination)
        [dispatch] = finished_with_callbacks(database, settings, sink.url, destination, 1)
        callback_delivery(callback_message_id(dispatch), destination)
        callback_delivery(callback_message_id(dispatch), destination)  # the same message again: stale
        callback_delivery(f"{uuid.uuid4()}.callback.1", destination)  # no such callback
        assert delivery.flush(20)
        # The stale ones were admitted and claimed nothing: their leases went back with the next batch.
        leases = client.zcard(f"{DEFAULT_PREFIX}leases:{destination}")
        view = database.run(lambda conn: callbacks.callback_view(conn, dispatch.job_id))
    client.close()
    assert sink.count() == 1
    assert (view.status, view.attempts) == (Status.SUCCESS, 1)
    assert leases == 0
    # This process holds no attempt of the destination in flight: a fourth one is admitted at once.
    assert delivery.flow.shares.take(destination, "next")
