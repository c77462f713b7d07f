"""Status callbacks end to end in a real Dramatiq worker (in this process) on real Redis, PostgreSQL and SQLite, to
real local receivers: signed, one per finish, retried without touching the job, and healed by the reconciler."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from actors.batching import Batcher
from actors.broker import Dispatcher, make_broker
from actors.callbacks import CALLBACK_MESSAGES, CallbackDelivery, send_armed
from actors.channels.webhook import WebhookChannel
from actors.flow import Admission, Reason
from ledger import callbacks, claims, destinations, transitions
from ledger.callbacks import CallbackView
from ledger.database import Database
from ledger.schema import callbacks as callbacks_table
from ledger.states import Status
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from tests.actors.conftest import make_reconciler, running_worker, submit, wait_for_status
from tests.holding_receiver import holding_receiver
from tests.ledger.conftest import armed_as_before_0010
from tests.webhook_sink import Reply, WebhookSink, webhook_sink

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def callback_fields(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    return {"callback_url": url, "callback_destination": f"webhook:{parts.hostname}:{parts.port}"}


def wait_for_callback(
    database: Database, job_id: uuid.UUID, statuses: set[Status], timeout: float = 20.0
) -> CallbackView:
    deadline = time.monotonic() + timeout
    view = None
    while time.monotonic() < deadline:
        view = database.run(lambda conn: callbacks.callback_view(conn, job_id))
        if view is not None and view.status in statuses:
            return view
        time.sleep(0.02)
    raise AssertionError(f"the callback of job {job_id} did not reach {sorted(statuses)}; last seen: {view}")


def received_events(sink: WebhookSink) -> list[tuple[str, str]]:
    return [(r.headers["webhook-id"], r.json["type"]) for r in sink.requests()]


def test_a_succeeded_job_posts_one_callback_signed_for_the_standardwebhooks_library(
    make_settings, database, dispatcher
) -> None:
    settings = make_settings(WJP_WEBHOOK_SECRET=SECRET, WJP_WEBHOOK_ALLOW_PRIVATE="true")
    with webhook_sink() as sink, running_worker(settings, database):
        job_id = submit(database, dispatcher, settings, **callback_fields(sink.url))
        view = wait_for_callback(database, job_id, {Status.SUCCESS})
        job = wait_for_status(database, job_id)
    assert (view.event, view.attempts, view.last_error) == (Status.SUCCESS, 1, None)
    [request] = sink.requests()
    body = Webhook(SECRET).verify(request.body, request.headers)
    assert request.headers["webhook-id"] == f"{job_id}.SUCCESS"
    assert body["type"] == "notification.succeeded"
    assert body["timestamp"].endswith("Z")
    assert body["data"]["job_id"] == str(job_id)
    assert (body["data"]["status"], body["data"]["attempts"]) == ("SUCCESS", 1)
    assert body["data"]["completed_at"] is not None and job.status is Status.SUCCESS


def test_a_failed_job_posts_its_failed_callback_and_after_a_manual_retry_its_succeeded_one(
    make_settings, database, dispatcher
) -> None:
    settings = make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="true")
    with (
        webhook_sink([Reply(400), Reply(200)]) as receiver,
        webhook_sink() as status_sink,
        running_worker(settings, database),
    ):
        fields = callback_fields(status_sink.url)
        job_id = submit(database, dispatcher, settings, channel="webhook", recipient=receiver.url, **fields)
        assert wait_for_status(database, job_id).status is Status.FAILED
        wait_for_callback(database, job_id, {Status.SUCCESS})
        retried = database.run(lambda conn: transitions.manual_retry(conn, job_id, now=utcnow(), extra_attempts=3))
        assert retried is not None
        dispatcher.send([retried], now=utcnow())
        assert wait_for_status(database, job_id, {Status.SUCCESS}).status is Status.SUCCESS
        view = wait_for_callback(database, job_id, {Status.SUCCESS})
    assert view.event is Status.SUCCESS
    assert received_events(status_sink) == [
        (f"{job_id}.FAILED", "notification.failed"),
        (f"{job_id}.SUCCESS", "notification.succeeded"),
    ]
    assert [r.json["data"]["status"] for r in status_sink.requests()] == ["FAILED", "SUCCESS"]


def test_a_cancelled_job_posts_its_cancelled_callback(make_settings, database, dispatcher) -> None:
    settings = make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="true")
    with webhook_sink() as sink, running_worker(settings, database):
        job_id = submit(database, None, settings, **callback_fields(sink.url))
        assert database.run(lambda conn: transitions.cancel(conn, job_id, scope="", now=utcnow()))
        send_armed(database, dispatcher, [job_id], now=utcnow())
        wait_for_callback(database, job_id, {Status.SUCCESS})
    assert received_events(sink) == [(f"{job_id}.CANCELLED", "notification.cancelled")]
    assert sink.requests()[0].json["data"]["status"] == "CANCELLED"


def test_a_callback_receiver_that_fails_then_recovers_gets_it_and_the_job_stays_success(
    make_settings, database, dispatcher
) -> None:
    settings = make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="true", WJP_MAX_ATTEMPTS="5")
    with webhook_sink([Reply(503), Reply(500), Reply(200)]) as sink, running_worker(settings, database):
        job_id = submit(database, dispatcher, settings, **callback_fields(sink.url))
        view = wait_for_callback(database, job_id, {Status.SUCCESS})
        job = wait_for_status(database, job_id)
    assert (view.attempts, view.last_error) == (3, None)
    assert (job.status, job.attempts, job.last_error) == (Status.SUCCESS, 1, None)
    assert {r.headers["webhook-id"] for r in sink.requests()} == {f"{job_id}.SUCCESS"}
    assert sink.count() == 3


def test_a_black_holed_callback_fails_on_its_own_and_leaves_the_job_as_it_was(
    make_settings, database, dispatcher
) -> None:
    settings = make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="true", WJP_MAX_ATTEMPTS="2", WJP_WEBHOOK_TIMEOUT="0.3")
    with holding_receiver([60.0]) as receiver, running_worker(settings, database):
        job_id = submit(database, dispatcher, settings, **callback_fields(receiver.url))
        view = wait_for_callback(database, job_id, {Status.FAILED})
        job = wait_for_status(database, job_id)
    assert view.attempts == 2 and "timed out" in (view.last_error or "")
    assert (job.status, job.attempts, job.last_error) == (Status.SUCCESS, 1, None)
    # Each attempt timed out: under load one may do so before its request is even read.
    assert 1 <= len(receiver.received) <= 2


def reconciled_on(private_redis: Any, make_settings: Any) -> tuple[Any, Dispatcher]:
    """Settings for a reconciler with no grace and a dispatcher, both on a Redis of the test's own."""
    settings = make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="true", WJP_RECONCILE_GRACE="0", REDIS_URL=private_redis.url)
    return settings, Dispatcher(make_broker(private_redis.url), settings.queue)


def test_a_callback_whose_message_redis_lost_is_sent_again_by_the_reconciler(
    make_settings, database, private_redis
) -> None:
    settings, dispatcher = reconciled_on(private_redis, make_settings)
    with webhook_sink() as sink:
        job_id = submit(database, None, settings, **callback_fields(sink.url))
        assert database.run(lambda conn: transitions.cancel(conn, job_id, scope="", now=utcnow()))
        send_armed(database, dispatcher, [job_id], now=utcnow())
        assert dispatcher.broker.client.hlen(f"dramatiq:{settings.queue}.msgs") == 1
        dispatcher.broker.client.flushall()
        later = lambda: utcnow() + timedelta(seconds=1)  # noqa: E731
        report = make_reconciler(settings, database, dispatcher, clock=later).run_once()
        assert report.redispatched == 1
        with running_worker(settings, database):
            wait_for_callback(database, job_id, {Status.SUCCESS})
    assert received_events(sink) == [(f"{job_id}.CANCELLED", "notification.cancelled")]


def test_a_finished_jobs_callback_is_posted_by_its_worker_with_no_message_and_no_claim_statement(
    make_settings, database, dispatcher, monkeypatch
) -> None:
    settings = make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="true")
    claimed: list[object] = []
    real_succeed_and_claim = callbacks.succeed_and_claim

    def succeed_and_claim(conn, attempts, dispatches, **kwargs):
        claimed.extend(dispatches)
        return real_succeed_and_claim(conn, attempts, dispatches, **kwargs)

    monkeypatch.setattr(callbacks, "succeed_and_claim", succeed_and_claim)
    with webhook_sink() as sink, running_worker(settings, database) as delivery:
        sent: list[tuple[str, int]] = []
        real_send = delivery.dispatcher.send
        delivery.dispatcher.send = lambda dispatches, **kw: (
            sent.extend((d.destination, d.seq) for d in dispatches), real_send(dispatches, **kw)
        )  # fmt: skip
        job_id = submit(database, dispatcher, settings, **callback_fields(sink.url))
        view = wait_for_callback(database, job_id, {Status.SUCCESS})
    assert (view.event, view.attempts) == (Status.SUCCESS, 1)
    assert received_events(sink) == [(f"{job_id}.SUCCESS", "notification.succeeded")]
    # Claimed by the job's success statement: no message sent, no claim written; its success was written.
    assert (sent, claimed) == ([], [])


def test_a_callbacks_armed_message_from_before_0010_in_redis_is_not_sent_again_but_claims(
    make_settings, database, dispatcher
) -> None:
    settings = make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="true", WJP_RECONCILE_GRACE="0")
    with webhook_sink() as sink:
        fields = callback_fields(sink.url)
        job_id = submit(database, None, settings, **fields)
        assert database.run(lambda conn: claims.claim(conn, job_id, 1, now=utcnow(), worker="w")) is not None
        assert database.run(lambda conn: claims.succeed(conn, job_id, 1, now=utcnow()))
        armed_as_before_0010(database, job_id)
        # The worker that finished it sent the message naming its armed dispatch, which waits in the queue.
        armed = Dispatch(job_id, callbacks.ARMED_SEQ, utcnow(), fields["callback_destination"])
        dispatcher.send([armed], now=utcnow(), kind=CALLBACK_MESSAGES)
        later = lambda: utcnow() + timedelta(seconds=1)  # noqa: E731
        report = make_reconciler(settings, database, dispatcher, clock=later).run_once()
        assert (report.checked, report.redispatched) == (1, 0)
        with running_worker(settings, database):
            view = wait_for_callback(database, job_id, {Status.SUCCESS})
    assert (view.attempts, received_events(sink)) == (1, [(f"{job_id}.SUCCESS", "notification.succeeded")])


def test_a_callback_armed_for_a_worker_that_died_before_sending_it_is_sent_by_the_reconciler(
    make_settings, database, private_redis
) -> None:
    settings, dispatcher = reconciled_on(private_redis, make_settings)
    with webhook_sink() as sink:
        job_id = submit(database, None, settings, **callback_fields(sink.url))
        # The worker's success commits (arming the callback claimed for that worker), then the worker is gone.
        finished_at = utcnow() - timedelta(seconds=settings.visibility_timeout - 2)
        assert database.run(lambda conn: claims.claim(conn, job_id, 1, now=utcnow(), worker="w")) is not None
        assert database.run(lambda conn: claims.succeed(conn, job_id, 1, now=finished_at))
        report = make_reconciler(settings, database, dispatcher).run_once()
        assert (report.expired, report.redispatched) == (0, 0)  # its claim is the worker's for a visibility timeout
        time.sleep(3)
        report = make_reconciler(settings, database, dispatcher).run_once()
        assert report.expired == 1
        with running_worker(settings, database):
            view = wait_for_callback(database, job_id, {Status.SUCCESS})
    assert (view.event, view.attempts) == (Status.SUCCESS, 2)
    assert received_events(sink) == [(f"{job_id}.SUCCESS", "notification.succeeded")]


def test_a_callback_whose_worker_vanished_is_taken_back_and_delivered_by_another(
    make_settings, database, dispatcher
) -> None:
    settings = make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="true", WJP_VISIBILITY_TIMEOUT="5")
    with webhook_sink() as sink:
        job_id = submit(database, None, settings, **callback_fields(sink.url))
        long_ago = utcnow() - timedelta(seconds=60)
        assert database.run(lambda conn: transitions.cancel(conn, job_id, scope="", now=long_ago))
        [dispatch] = database.run(lambda conn: callbacks.dispatch_armed(conn, [job_id], now=long_ago))
        assert database.run(lambda conn: callbacks.claim(conn, job_id, dispatch.seq, now=long_ago)) is not None
        report = make_reconciler(settings, database, dispatcher).run_once()
        assert report.expired == 1
        with running_worker(settings, database):
            view = wait_for_callback(database, job_id, {Status.SUCCESS})
    assert (view.attempts, sink.count()) == (2, 1)


def test_a_callback_obeys_the_limits_of_its_destination(make_settings, database, dispatcher) -> None:
    settings = make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="true")
    with holding_receiver([0.3]) as receiver, running_worker(settings, database, threads=4):
        fields = callback_fields(receiver.url)
        database.run(
            lambda conn: destinations.set_limits(
                conn, fields["callback_destination"], destinations.Limits(1, None), now=utcnow()
            )
        )
        jobs = [submit(database, dispatcher, settings, **fields) for _ in range(4)]
        views = [wait_for_callback(database, job_id, {Status.SUCCESS}) for job_id in jobs]
    assert len(receiver.received) == 4
    assert max(held.in_flight for held in receiver.received) == 1
    # Those their finishing worker's admission deferred went back to a message, that attempt not counted.
    assert [view.attempts for view in views] == [1] * 4


def test_a_callback_the_guard_refuses_as_its_worker_sends_it_fails_on_its_own(
    make_settings, database, dispatcher
) -> None:
    settings = make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="false")  # the sink is on 127.0.0.1
    with webhook_sink() as sink, running_worker(settings, database):
        job_id = submit(database, dispatcher, settings, **callback_fields(sink.url))
        view = wait_for_callback(database, job_id, {Status.FAILED})
        job = wait_for_status(database, job_id)
    assert (sink.count(), job.status, view.attempts) == (0, Status.SUCCESS, 1)
    assert view.last_error


def test_a_job_whose_failure_the_reconciler_decides_gets_its_callback_in_the_same_pass(
    make_settings, database, dispatcher
) -> None:
    settings = make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="true", WJP_VISIBILITY_TIMEOUT="5", WJP_MAX_ATTEMPTS="1")
    with webhook_sink() as sink:
        long_ago = utcnow() - timedelta(seconds=60)
        job_id = submit(database, None, settings, now=long_ago, **callback_fields(sink.url))
        assert database.run(lambda conn: claims.claim(conn, job_id, 1, now=long_ago, worker="gone")) is not None
        report = make_reconciler(settings, database, dispatcher).run_once()
        assert (report.failed, report.redispatched) == (1, 1)
        with running_worker(settings, database):
            wait_for_callback(database, job_id, {Status.SUCCESS})
    [request] = sink.requests()
    assert request.json["type"] == "notification.failed"
    assert "visibility timeout" in request.json["data"]["last_error"]
    assert database.run(lambda conn: callbacks.callback_view(conn, job_id)).event is Status.FAILED


def test_a_claimed_callback_its_destinations_limit_defers_waits_for_a_release_not_for_the_lease_to_expire(
    make_settings, database, dispatcher
) -> None:
    """Its finishing worker's admission deferred for the destination's concurrency limit: a message at once, which
    the gate parks on the destination's waiting list (woken by a release); not parked in the ledger until the last
    lease's expiry, a visibility timeout away, for a reconciler pass to send."""
    settings = make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="true", WJP_VISIBILITY_TIMEOUT="600")
    delivery = CallbackDelivery(
        database=database, dispatcher=dispatcher, webhook=WebhookChannel(settings.channels), settings=settings,
        flow=None, ledger=Batcher(lambda requests: [None] * len(requests), "test"),
    )  # fmt: skip
    fields = callback_fields("http://127.0.0.1:9/status")
    job_id = submit(database, None, settings, **fields)
    now = utcnow()
    assert database.run(lambda conn: claims.claim(conn, job_id, 1, now=now, worker="w")) is not None
    assert database.run(lambda conn: claims.succeed(conn, job_id, 1, now=now))
    limit = Admission(granted=False, reason=Reason.LIMIT, until=now + timedelta(seconds=600))
    delivery._give_back(job_id, fields["callback_destination"], limit)
    row = database.run(
        lambda conn: conn.execute(select(callbacks_table).where(callbacks_table.c.job_id == job_id)).one()
    )
    assert (row.status, row.attempts) == ("PENDING", 0)
    assert row.dispatch_seq > 0 and row.next_attempt_at <= utcnow()  # a message, due now
    missing = dispatcher.missing([Dispatch(job_id, row.dispatch_seq, row.next_attempt_at)], CALLBACK_MESSAGES)
    assert missing == []
