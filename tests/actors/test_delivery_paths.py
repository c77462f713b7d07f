"""The delivery actor's less travelled paths, each on the real ledger and real Redis: messages it must drop,
channels that misbehave, an attempt cut by Dramatiq's time limit, Redis or the ledger failing around an attempt."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy.engine import make_url

from actors.broker import NAMESPACE, Dispatcher, make_broker
from actors.channels.base import Channel, ChannelConfig, Notification, TransientError
from actors.delivery import MAX_ERROR_LENGTH, Delivery
from actors.reconciler import Reconciler
from actors.settings import Settings
from ledger import queries
from ledger.database import Database
from ledger.states import Status
from ledger.timestamps import utcnow
from tests.actors.conftest import RecordingChannel, running_worker, submit, wait_for_status
from tests.conftest import RedisProcess
from tests.tcp_proxy import tcp_proxy


class ScriptedChannel(Channel):
    """A `log` channel whose deliveries run the given function, so a test decides how an attempt behaves."""

    name = "log"

    def __init__(self, behave: Callable[[Notification], str]) -> None:
        super().__init__(ChannelConfig())
        self.behave = behave
        self.calls = 0

    def check_recipient(self, recipient: str) -> str | None:
        return None

    def deliver(self, notification: Notification) -> str:
        self.calls += 1
        return self.behave(notification)


def delivery_for(settings: Settings, database: Database, dispatcher: Dispatcher, channel: Channel) -> Delivery:
    """The delivery actor's logic, called directly by the test instead of by a Dramatiq worker thread."""
    return Delivery(database=database, dispatcher=dispatcher, channels={channel.name: channel}, settings=settings)


def job_of(database: Database, job_id: uuid.UUID) -> queries.JobView:
    job = database.run(lambda conn: queries.get_job(conn, job_id, scope=None))
    assert job is not None
    return job


def attempts_of(database: Database, job_id: uuid.UUID) -> list[queries.AttemptView]:
    return database.run(lambda conn: queries.list_attempts(conn, job_id))


@pytest.mark.parametrize("rid_of", [lambda job: "not-a-message-id", lambda job: f"{job}.{2**31}"])
def test_a_message_with_a_malformed_id_is_dropped_and_claims_nothing(make_settings, database, dispatcher, rid_of):
    settings = make_settings()
    channel = RecordingChannel()
    delivery = delivery_for(settings, database, dispatcher, channel)
    job_id = submit(database, None, settings)

    delivery(str(job_id), rid_of(job_id))

    job = job_of(database, job_id)
    assert (job.status, job.attempts, channel.count(job_id)) == (Status.PENDING, 0, 0)


def test_a_channel_raising_an_unexpected_exception_costs_one_attempt_and_keeps_its_trace(
    make_settings, database, dispatcher, caplog
):
    settings = make_settings(WJP_BACKOFF_INITIAL="30")

    def explode(notification: Notification) -> str:
        raise RuntimeError("the channel has a bug")

    delivery = delivery_for(settings, database, dispatcher, ScriptedChannel(explode))
    job_id = submit(database, None, settings)

    with caplog.at_level(logging.ERROR, logger="wjp.worker"):
        delivery(str(job_id), f"{job_id}.1")

    job = job_of(database, job_id)
    assert (job.status, job.attempts) == (Status.RETRY, 1)
    assert job.last_error == "RuntimeError: the channel has a bug"
    traced = [r for r in caplog.records if r.exc_info and str(job_id) in r.getMessage()]
    assert traced and traced[0].exc_info[0] is RuntimeError


def test_a_long_error_is_cut_to_the_longest_the_ledger_keeps(make_settings, database, dispatcher):
    settings = make_settings(WJP_BACKOFF_INITIAL="30")

    def long_refusal(notification: Notification) -> str:
        raise TransientError("x" * (3 * MAX_ERROR_LENGTH))

    delivery = delivery_for(settings, database, dispatcher, ScriptedChannel(long_refusal))
    job_id = submit(database, None, settings)

    delivery(str(job_id), f"{job_id}.1")

    job = job_of(database, job_id)
    assert job.last_error == "x" * MAX_ERROR_LENGTH
    assert [a.error for a in attempts_of(database, job_id)] == ["x" * MAX_ERROR_LENGTH]


def test_an_early_message_goes_back_to_wait_in_the_delay_queue_and_is_delivered_once_due(
    make_settings, database, dispatcher
):
    settings = make_settings()
    channel = RecordingChannel()
    delivery = delivery_for(settings, database, dispatcher, channel)
    send_at = utcnow() + timedelta(seconds=2)
    job_id = submit(database, None, settings, send_at=send_at)

    # Its message arrives now, two seconds before the job is due (a sender whose clock runs ahead)
    delivery(str(job_id), f"{job_id}.1")

    assert (job_of(database, job_id).status, channel.count(job_id)) == (Status.PENDING, 0)
    client = dispatcher.broker.client
    assert client.hexists(f"{NAMESPACE}:{dispatcher.queue}.DQ.msgs", f"{job_id}.1")
    with running_worker(settings, database, channels={"log": channel}):
        job = wait_for_status(database, job_id)
    [attempt] = attempts_of(database, job_id)
    assert (job.status, channel.count(job_id)) == (Status.SUCCESS, 1)
    assert attempt.started_at >= send_at - timedelta(milliseconds=500)


def test_a_retry_that_cannot_be_enqueued_waits_in_the_ledger_for_the_reconciler(
    make_settings, database, private_redis: RedisProcess, caplog
):
    settings = make_settings(WJP_BACKOFF_INITIAL="0.1", WJP_BACKOFF_JITTER="0", WJP_RECONCILE_GRACE="0")
    dispatcher = Dispatcher(make_broker(private_redis.url), settings.queue)

    def fail_with_redis_gone(notification: Notification) -> str:
        private_redis.stop()
        raise TransientError("receiver unavailable")

    delivery = delivery_for(settings, database, dispatcher, ScriptedChannel(fail_with_redis_gone))
    job_id = submit(database, None, settings)

    with caplog.at_level(logging.WARNING, logger="wjp.worker"):
        delivery(str(job_id), f"{job_id}.1")

    job = job_of(database, job_id)
    assert (job.status, job.attempts, job.next_attempt_at is not None) == (Status.RETRY, 1, True)
    assert any("could not enqueue" in r.getMessage() and str(job_id) in r.getMessage() for r in caplog.records)

    # Once Redis answers again, a reconciler pass finds the retry's message missing and sends it
    private_redis.start()
    reconciler = Reconciler(
        database=database,
        dispatcher=dispatcher,
        visibility_timeout=settings.visibility_timeout,
        grace=0,
        schedule_horizon=settings.schedule_horizon,
        clock=lambda: utcnow() + timedelta(seconds=1),
    )
    assert reconciler.run_once().redispatched == 1
    assert dispatcher.missing([_current_dispatch(database, job_id)]) == []


def _current_dispatch(database: Database, job_id: uuid.UUID):
    from ledger.transitions import Dispatch

    state = database.run(lambda conn: queries.dispatch_state(conn, job_id))
    assert state is not None
    return Dispatch(job_id, state.dispatch_seq, state.next_attempt_at)


def test_an_attempt_cut_by_dramatiqs_time_limit_is_a_transient_failure_and_retried(make_settings, database, dispatcher):
    settings = make_settings(WJP_VISIBILITY_TIMEOUT="3", WJP_BACKOFF_INITIAL="0.1", WJP_BACKOFF_JITTER="0")
    first = threading.Event()

    def ignore_every_deadline_once(notification: Notification) -> str:
        if not first.is_set():
            first.set()
            # A channel of a user's that never looks at the time: Python code Dramatiq's time limit can interrupt
            for _ in range(400):
                time.sleep(0.05)
        return "done"

    channel = ScriptedChannel(ignore_every_deadline_once)
    with running_worker(settings, database, channels={"log": channel}, threads=1, booted=True):
        job_id = submit(database, dispatcher, settings)
        job = wait_for_status(database, job_id, timeout=30)

    assert (job.status, job.attempts) == (Status.SUCCESS, 2)
    history = attempts_of(database, job_id)
    assert [a.outcome for a in history] == ["transient_error", "success"]
    assert "time limit" in history[0].error


def test_a_success_the_ledger_cannot_hear_of_within_the_claim_is_given_up_and_taken_back_later(
    make_settings, postgres_db, dispatcher, caplog
):
    settings = make_settings(WJP_VISIBILITY_TIMEOUT="2")
    host_url = make_url(postgres_db.engine.url.render_as_string(hide_password=False))
    with tcp_proxy(host_url.host or "127.0.0.1", host_url.port or 5432) as proxy:
        proxied = Database(host_url.set(port=proxy.port).render_as_string(hide_password=False), pool_size=4)

        def deliver_then_lose_the_ledger(notification: Notification) -> str:
            proxy.cut()  # the network to the ledger fails right after the receiver accepted
            return "accepted"

        delivery = delivery_for(settings, proxied, dispatcher, ScriptedChannel(deliver_then_lose_the_ledger))
        job_id = submit(postgres_db, None, settings)
        with caplog.at_level(logging.ERROR, logger="wjp.worker"):
            delivery(str(job_id), f"{job_id}.1")
            assert delivery.flush(timeout=30)
        proxied.dispose()

    # The worker gave up once the claim's time was over: the job is still held by that claim
    assert job_of(postgres_db, job_id).status is Status.PROCESSING
    assert any("could not record the success" in r.getMessage() for r in caplog.records)
    # and, past the visibility timeout, the reconciler takes the claim back for another attempt
    time.sleep(settings.visibility_timeout)
    report = Reconciler(
        database=postgres_db,
        dispatcher=dispatcher,
        visibility_timeout=settings.visibility_timeout,
        grace=settings.reconcile_grace,
        schedule_horizon=settings.schedule_horizon,
    ).run_once()
    assert report.expired == 1
    assert job_of(postgres_db, job_id).status is Status.RETRY


def test_a_pass_pages_through_more_lost_messages_than_one_batch_holds(make_settings, database, dispatcher):
    settings = make_settings()
    jobs = [submit(database, dispatcher, settings) for _ in range(12)]
    client = dispatcher.broker.client
    client.delete(f"{NAMESPACE}:{dispatcher.queue}", f"{NAMESPACE}:{dispatcher.queue}.msgs")

    report = Reconciler(
        database=database,
        dispatcher=dispatcher,
        visibility_timeout=settings.visibility_timeout,
        grace=0,
        schedule_horizon=settings.schedule_horizon,
        clock=lambda: utcnow() + timedelta(seconds=1),
        batch_size=5,
    ).run_once()

    assert (report.redispatched, report.checked) == (12, 12)
    assert dispatcher.missing([_current_dispatch(database, job_id) for job_id in jobs]) == []
