"""Delivery end to end inside one process: a real Dramatiq worker on real Redis and the ledger, delivering
to real local receivers (HTTP for webhooks, aiosmtpd for email), with retries, backoff and jitter."""

from __future__ import annotations

import uuid
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller
from standardwebhooks.webhooks import Webhook

from actors.channels import build_channels
from ledger import queries, transitions
from ledger.states import Status
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from tests.actors.conftest import RecordingChannel, gaps, running_worker, submit, wait_for_status
from tests.conftest import free_port
from tests.webhook_sink import Reply, webhook_sink

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def attempts_of(database, job_id: uuid.UUID) -> list[queries.AttemptView]:
    return database.run(lambda conn: queries.list_attempts(conn, job_id))


def test_a_webhook_failing_twice_then_answering_succeeds_on_the_third_attempt_with_backoff(
    make_settings, database, dispatcher
):
    settings = make_settings(WJP_BACKOFF_INITIAL="0.3", WJP_BACKOFF_JITTER="0.1", WJP_WEBHOOK_SECRET=SECRET)
    with webhook_sink([Reply(503), Reply(500), Reply(200)]) as sink, running_worker(settings, database):
        job_id = submit(database, dispatcher, settings, channel="webhook", recipient=sink.url, message="hi")
        job = wait_for_status(database, job_id)
        received = sink.requests()

    assert job.status is Status.SUCCESS and job.attempts == 3
    # Each retry began only after its backoff (initial × 1, then × 2) from the failure before it, by the ledger's
    # clock; how soon after is speed, for bench/ (the jitter's bound is pinned by test_backoff.py's table).
    history = attempts_of(database, job_id)
    first, second = (gap.total_seconds() for gap in gaps(history))
    assert first >= 0.3 and second >= 0.6, (first, second)
    # The same webhook-id (the job id) on every attempt, each signed verifiably for a real receiver
    assert {r.headers["webhook-id"] for r in received} == {str(job_id)}
    for request in received:
        payload = Webhook(SECRET).verify(request.body, request.headers)
        assert payload["job_id"] == str(job_id)
    assert [r.json["attempt"] for r in received] == [1, 2, 3]
    assert [a.outcome for a in history] == ["transient_error", "transient_error", "success"]
    assert "503" in history[0].error and "500" in history[1].error


def test_a_webhook_answering_404_fails_after_one_attempt(make_settings, database, dispatcher):
    settings = make_settings()
    with webhook_sink([Reply(404)]) as sink, running_worker(settings, database):
        job_id = submit(database, dispatcher, settings, channel="webhook", recipient=sink.url)
        job = wait_for_status(database, job_id)
    assert (job.status, job.attempts) == (Status.FAILED, 1)
    assert "404" in job.last_error
    assert [a.outcome for a in attempts_of(database, job_id)] == ["permanent_error"]


def test_a_webhook_always_answering_500_fails_after_the_maximum_attempts(make_settings, database, dispatcher):
    settings = make_settings(WJP_MAX_ATTEMPTS="3", WJP_BACKOFF_INITIAL="0.05", WJP_BACKOFF_JITTER="0")
    with webhook_sink([Reply(500)]) as sink, running_worker(settings, database):
        job_id = submit(database, dispatcher, settings, channel="webhook", recipient=sink.url)
        job = wait_for_status(database, job_id)
        assert sink.count(job_id) == 3
    assert (job.status, job.attempts, job.max_attempts) == (Status.FAILED, 3, 3)
    assert "500" in job.last_error


def test_a_429_with_retry_after_delays_the_next_attempt_at_least_that_long(make_settings, database, dispatcher):
    settings = make_settings(WJP_BACKOFF_INITIAL="0.05", WJP_BACKOFF_JITTER="0")
    with webhook_sink([Reply(429, {"Retry-After": "1"}), Reply(200)]) as sink, running_worker(settings, database):
        job_id = submit(database, dispatcher, settings, channel="webhook", recipient=sink.url)
        job = wait_for_status(database, job_id)
        first, second = sink.requests()
    assert job.status is Status.SUCCESS
    assert second.at - first.at >= 1.0


def test_a_hanging_webhook_is_cut_off_by_the_timeout_and_retried(make_settings, database, dispatcher):
    settings = make_settings(WJP_WEBHOOK_TIMEOUT="0.3")
    with webhook_sink([Reply(200, delay=2.0), Reply(200)]) as sink, running_worker(settings, database):
        job_id = submit(database, dispatcher, settings, channel="webhook", recipient=sink.url)
        job = wait_for_status(database, job_id)
    assert (job.status, job.attempts) == (Status.SUCCESS, 2)
    assert [a.outcome for a in attempts_of(database, job_id)] == ["transient_error", "success"]


def test_a_webhook_to_loopback_without_the_allow_flag_fails_and_sends_nothing(make_settings, database, dispatcher):
    settings = make_settings(WJP_WEBHOOK_ALLOW_PRIVATE="false")
    with webhook_sink() as sink, running_worker(settings, database):
        # Intake may refuse a literal loopback address; record it directly to test the worker's guard
        job_id = submit(database, dispatcher, settings, channel="webhook", recipient=sink.url)
        job = wait_for_status(database, job_id)
        assert sink.count() == 0
    assert (job.status, job.attempts) == (Status.FAILED, 1)


def test_the_same_message_sent_twice_is_delivered_once(make_settings, database, dispatcher):
    settings = make_settings()
    channel = RecordingChannel(delay=0.05)
    job_id = submit(database, dispatcher, settings)
    dispatcher.send([Dispatch(job_id, 1, utcnow())], now=utcnow())
    with running_worker(settings, database, channels={"log": channel}):
        wait_for_status(database, job_id)
        # Give the duplicate time to be fetched and dropped
        wait_for_redis_drain(dispatcher)
    assert channel.count(job_id) == 1


def test_a_message_from_an_older_dispatch_never_claims_the_job(make_settings, database, dispatcher):
    settings = make_settings()
    job_id = submit(database, None, settings)
    # The reconciler re-dispatched it (seq 2): the copy of dispatch 1 that shows up later is stale
    now = utcnow()
    [current] = database.run(lambda conn: transitions.redispatch(conn, [(job_id, 1)], now=now))
    dispatcher.send([Dispatch(job_id, 1, now)], now=now)
    channel = RecordingChannel()
    with running_worker(settings, database, channels={"log": channel}):
        wait_for_redis_drain(dispatcher)
        assert database.run(lambda conn: queries.get_job(conn, job_id, scope=None)).status is Status.PENDING
        dispatcher.send([current], now=now)
        job = wait_for_status(database, job_id)
    assert (job.status, channel.count(job_id)) == (Status.SUCCESS, 1)


def test_a_cancelled_job_is_never_delivered(make_settings, database, dispatcher):
    settings = make_settings()
    job_id = submit(database, dispatcher, settings)
    assert database.run(lambda conn: transitions.cancel(conn, job_id, scope="", now=utcnow()))
    channel = RecordingChannel()
    with running_worker(settings, database, channels={"log": channel}):
        wait_for_redis_drain(dispatcher)
    assert channel.count(job_id) == 0


def test_a_manual_retry_of_a_failed_job_delivers_it_with_a_fresh_attempt_budget(make_settings, database, dispatcher):
    settings = make_settings(WJP_MAX_ATTEMPTS="1")
    channel = RecordingChannel(failures=1)
    with running_worker(settings, database, channels={"log": channel}):
        job_id = submit(database, dispatcher, settings)
        assert wait_for_status(database, job_id).status is Status.FAILED
        retry = database.run(lambda conn: transitions.manual_retry(conn, job_id, now=utcnow(), extra_attempts=1))
        dispatcher.send([retry], now=utcnow())
        job = wait_for_status(database, job_id, {Status.SUCCESS})
    assert (job.attempts, job.max_attempts) == (2, 2)
    assert [a.outcome for a in attempts_of(database, job_id)] == ["transient_error", "success"]


class SmtpRecorder:
    """aiosmtpd handler: keeps every accepted message; refuses the first `refusals` DATA with 451."""

    def __init__(self, refusals: int = 0) -> None:
        self.refusals = refusals
        self.seen: list[bytes] = []
        self.accepted: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):
        self.seen.append(envelope.content)
        if len(self.seen) <= self.refusals:
            return "451 4.3.0 try again later"
        self.accepted.append(envelope.content)
        return "250 OK"


@pytest.fixture
def smtp_server():
    handlers: list[Controller] = []

    def start(recorder: SmtpRecorder) -> str:
        controller = Controller(recorder, hostname="127.0.0.1", port=free_port())
        controller.start()
        handlers.append(controller)
        return f"smtp://127.0.0.1:{controller.port}"

    yield start
    for controller in handlers:
        controller.stop()


def test_an_email_reaches_a_real_smtp_server_once_with_a_message_id_stable_across_retries(
    make_settings, database, dispatcher, smtp_server
):
    recorder = SmtpRecorder(refusals=1)
    settings = make_settings(WJP_SMTP_URL=smtp_server(recorder))
    with running_worker(settings, database):
        job_id = submit(
            database, dispatcher, settings, channel="email", recipient="user@example.com",
            message="Halo dari sistem worker!\nSecond line.",
        )  # fmt: skip
        job = wait_for_status(database, job_id)
    assert (job.status, job.attempts) == (Status.SUCCESS, 2)
    assert len(recorder.accepted) == 1
    first, delivered = (message_from_bytes(raw) for raw in recorder.seen)
    assert first["Message-ID"] == delivered["Message-ID"]
    assert str(job_id) in delivered["Message-ID"]
    assert delivered["Subject"] == "Halo dari sistem worker!"
    assert delivered["To"] == "user@example.com"


def test_a_stopping_worker_ends_its_smtp_sessions_with_quit(make_settings, database, dispatcher, smtp_server):
    class Counting(SmtpRecorder):
        quits = 0

        async def handle_QUIT(self, server, session, envelope):
            self.quits += 1
            return "221 Bye"

    recorder = Counting()
    settings = make_settings(WJP_SMTP_URL=smtp_server(recorder))
    with running_worker(settings, database):
        job_id = submit(database, dispatcher, settings, channel="email", recipient="user@example.com")
        assert wait_for_status(database, job_id).status is Status.SUCCESS
        assert recorder.quits == 0  # the session is kept for the next message

    assert (len(recorder.accepted), recorder.quits) == (1, 1)


def test_an_email_refused_with_a_5xx_fails_at_once(make_settings, database, dispatcher, smtp_server):
    class Refusing(SmtpRecorder):
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            return "550 5.1.1 no such user"

    settings = make_settings(WJP_SMTP_URL=smtp_server(Refusing()))
    with running_worker(settings, database):
        job_id = submit(database, dispatcher, settings, channel="email", recipient="nobody@example.com")
        job = wait_for_status(database, job_id)
    assert (job.status, job.attempts) == (Status.FAILED, 1)
    assert "550" in job.last_error


def test_without_an_smtp_url_an_email_is_written_to_the_outbox(make_settings, database, dispatcher, tmp_path):
    settings = make_settings(WJP_OUTBOX_DIR=str(tmp_path / "outbox"))
    with running_worker(settings, database, channels=build_channels(settings.channels)):
        job_id = submit(database, dispatcher, settings, channel="email", recipient="user@example.com")
        assert wait_for_status(database, job_id).status is Status.SUCCESS
    assert (tmp_path / "outbox" / f"{job_id}.eml").exists()


def wait_for_redis_drain(dispatcher, timeout: float = 10.0) -> None:
    """Wait until every message of the test's queue has been fetched and acknowledged."""
    import time

    client = dispatcher.broker.client
    keys = [f"dramatiq:{dispatcher.queue}.msgs", f"dramatiq:{dispatcher.queue}.DQ.msgs"]
    deadline = time.monotonic() + timeout
    while any(client.hlen(key) for key in keys):
        assert time.monotonic() < deadline, "messages still in Redis"
        time.sleep(0.02)


def test_the_attempts_endpoint_shows_every_attempt_in_order_with_outcome_and_error(
    make_settings, database, dispatcher, redis_server_url, queue_name
):
    from falcon import testing

    from service.app import create_app
    from service.settings import ServiceSettings
    from tests.conftest import settings_env

    settings = make_settings(WJP_BACKOFF_INITIAL="0.05", WJP_BACKOFF_JITTER="0")
    client = testing.TestClient(
        create_app(
            ServiceSettings.from_env(settings_env(database, redis_server_url, queue_name)),
            database=database,
            dispatcher=dispatcher,
        )
    )
    with webhook_sink([Reply(500), Reply(429), Reply(200)]) as sink, running_worker(settings, database):
        answer = client.simulate_post(
            "/api/notifications",
            json={"recipient": sink.url, "channel": "webhook", "message": "hi", "idempotency_key": "attempts-1"},
        )
        wait_for_status(database, uuid.UUID(answer.json["job_id"]))
    shown = client.simulate_get(f"/api/notifications/{answer.json['job_id']}/attempts").json
    assert [a["number"] for a in shown["attempts"]] == [1, 2, 3]
    assert [a["outcome"] for a in shown["attempts"]] == ["transient_error", "throttled", "success"]
    assert "500" in shown["attempts"][0]["error"] and "429" in shown["attempts"][1]["error"]
    assert shown["attempts"][2]["error"] is None
    assert all(a["started_at"] <= a["finished_at"] and a["worker"] for a in shown["attempts"])
