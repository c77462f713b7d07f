"""The reconciler against real Redis: it takes back expired claims and re-dispatches what Redis lost,
exactly once, and leaves alone what is merely waiting."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
import redis
from falcon import testing

from actors.broker import NAMESPACE, Dispatcher, make_broker
from ledger import claims, intake, queries, transitions
from ledger.database import Database
from ledger.intake import NewNotification
from ledger.states import Status
from ledger.timestamps import utcnow
from service.app import create_app
from service.settings import ServiceSettings
from tests.actors.conftest import RecordingChannel, make_reconciler, running_worker, submit, wait_for_status
from tests.conftest import settings_env


def queued_messages(url: str, queue: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return client.hlen(f"{NAMESPACE}:{queue}.msgs") + client.hlen(f"{NAMESPACE}:{queue}.DQ.msgs")
    finally:
        client.close()


def test_an_expired_claim_is_taken_back_and_the_job_delivered_by_another_worker(make_settings, database, dispatcher):
    settings = make_settings(WJP_VISIBILITY_TIMEOUT="60")
    # Given a job whose worker claimed it 61 s ago and vanished with its message
    long_ago = utcnow() - timedelta(seconds=61)
    job_id = submit(database, None, settings, now=long_ago)
    database.run(lambda conn: claims.claim(conn, job_id, 1, now=long_ago, worker="gone:1:t"))

    # When a pass runs
    report = make_reconciler(settings, database, dispatcher).run_once()

    # Then the claim is taken back and re-dispatched, and a live worker delivers the second attempt
    assert (report.expired, report.failed) == (1, 0)
    channel = RecordingChannel()
    with running_worker(settings, database, channels={"log": channel}):
        job = wait_for_status(database, job_id)
    assert job.status is Status.SUCCESS and job.attempts == 2
    history = database.run(lambda conn: queries.list_attempts(conn, job_id))
    assert [(a.number, a.outcome) for a in history] == [(1, "timed_out"), (2, "success")]
    assert channel.count(job_id) == 1


def test_a_stuck_job_with_no_attempts_left_is_marked_failed_for_the_visibility_timeout(
    make_settings, database, dispatcher
):
    settings = make_settings(WJP_VISIBILITY_TIMEOUT="60", WJP_MAX_ATTEMPTS="1")
    long_ago = utcnow() - timedelta(seconds=120)
    job_id = submit(database, None, settings, now=long_ago)
    database.run(lambda conn: claims.claim(conn, job_id, 1, now=long_ago, worker="gone:1:t"))

    report = make_reconciler(settings, database, dispatcher).run_once()

    assert (report.expired, report.failed) == (0, 1)
    job = database.run(lambda conn: queries.get_job(conn, job_id, scope=None))
    assert job.status is Status.FAILED
    assert "visibility timeout" in job.last_error


def test_a_claim_younger_than_the_visibility_timeout_is_left_alone(make_settings, database, dispatcher):
    settings = make_settings(WJP_VISIBILITY_TIMEOUT="60")
    job_id = submit(database, None, settings)
    database.run(lambda conn: claims.claim(conn, job_id, 1, now=utcnow(), worker="busy:1:t"))

    report = make_reconciler(settings, database, dispatcher).run_once()

    assert (report.expired, report.failed, report.redispatched) == (0, 0, 0)
    assert database.run(lambda conn: queries.get_job(conn, job_id, scope=None)).status is Status.PROCESSING


def test_fifty_jobs_wiped_by_flushall_are_redispatched_once_and_delivered_once(
    make_settings, database, private_redis, queue_name
):
    settings = make_settings(REDIS_URL=private_redis.url, WJP_RECONCILE_GRACE="0")
    dispatcher = Dispatcher(make_broker(private_redis.url), queue_name)
    jobs = [submit(database, dispatcher, settings) for _ in range(50)]
    reconciler = make_reconciler(settings, database, dispatcher, clock=lambda: utcnow() + timedelta(seconds=1))
    # Given the messages are all in Redis, a pass finds nothing to do
    assert reconciler.run_once().redispatched == 0

    # When Redis loses everything
    redis.Redis.from_url(private_redis.url).flushall()
    report = reconciler.run_once()

    # Then one pass re-dispatches exactly the 50, a second none, and each is delivered once
    assert report.redispatched == 50
    assert reconciler.run_once().redispatched == 0
    assert queued_messages(private_redis.url, queue_name) == 50
    channel = RecordingChannel()
    with running_worker(settings, database, channels={"log": channel}):
        for job_id in jobs:
            assert wait_for_status(database, job_id).status is Status.SUCCESS
    assert all(channel.count(job_id) == 1 for job_id in jobs)


def test_a_post_while_redis_is_down_is_accepted_and_delivered_once_redis_is_back(
    make_settings, database, private_redis, queue_name, tmp_path
):
    env = settings_env(database, private_redis.url, queue_name, WJP_RECONCILE_GRACE="0")
    dispatcher = Dispatcher(make_broker(private_redis.url), queue_name)
    client = testing.TestClient(create_app(ServiceSettings.from_env(env), database=database, dispatcher=dispatcher))
    private_redis.stop()

    answer = client.simulate_post(
        "/api/notifications", json={"recipient": "ops", "channel": "log", "message": "hi", "idempotency_key": "down-1"}
    )
    assert answer.status_code == 202
    job_id = answer.json["job_id"]
    assert client.simulate_get(f"/api/notifications/{job_id}").json["status"] == "PENDING"

    private_redis.start()
    settings = make_settings(REDIS_URL=private_redis.url, WJP_RECONCILE_GRACE="0")
    report = make_reconciler(settings, database, dispatcher, clock=lambda: utcnow() + timedelta(seconds=1)).run_once()
    assert report.redispatched == 1
    with running_worker(settings, database):
        assert wait_for_status(database, uuid.UUID(job_id)).status is Status.SUCCESS


class WatchedLedger:
    """A pass's ledger, as the reconciler uses it (`run`), with hooks the test uses to order two passes:
    `after_read` sees each non-empty read made outside a transaction, `after_commit` each committed transaction."""

    def __init__(
        self,
        database: Database,
        *,
        after_read: Callable[[list], None] = lambda rows: None,
        after_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self.database = database
        self.after_read = after_read
        self.after_commit = after_commit

    def run(self, operation, *, transaction: bool = False, kept: bool = False):
        result = self.database.run(operation, transaction=transaction, kept=kept)
        if transaction:
            self.after_commit()
        elif isinstance(result, list) and result:
            self.after_read(result)
        return result


def test_two_passes_that_both_read_every_lost_job_before_either_changes_one_redispatch_each_once(
    make_settings, database, dispatcher, queue_name
):
    settings = make_settings(WJP_RECONCILE_GRACE="0")
    jobs = [submit(database, None, settings) for _ in range(200)]
    clock = lambda: utcnow() + timedelta(seconds=1)  # noqa: E731
    # Each pass waits, after reading the lost jobs, until the other has read them too: both then act on one reading.
    both_read = threading.Barrier(2, timeout=60)
    reads: list[int] = []

    def read_then_wait_for_the_other(rows: list) -> None:
        reads.append(len(rows))
        both_read.wait()

    ledgers = [WatchedLedger(database, after_read=read_then_wait_for_the_other) for _ in range(2)]
    reconcilers = [make_reconciler(settings, ledger, dispatcher, clock=clock) for ledger in ledgers]
    reports = []
    threads = [threading.Thread(target=lambda r=r: reports.append(r.run_once())) for r in reconcilers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert reads == [200, 200] and not both_read.broken
    assert sum(r.redispatched for r in reports) == 200
    assert queued_messages(settings.redis_url, queue_name) == 200
    channel = RecordingChannel()
    with running_worker(settings, database, channels={"log": channel}, threads=8):
        for job_id in jobs:
            wait_for_status(database, job_id)
    assert all(channel.count(job_id) == 1 for job_id in jobs)


@pytest.mark.parametrize("lost", ["never_sent", "claim_expired"])
def test_a_pass_that_reads_the_jobs_while_another_holds_them_uncommitted_sends_none_of_them_again(
    make_settings, database, dispatcher, queue_name, redis_server_url, lost
):
    settings = make_settings(WJP_RECONCILE_GRACE="0", WJP_VISIBILITY_TIMEOUT="60")
    long_ago = utcnow() - timedelta(seconds=61)
    jobs = [submit(database, None, settings, now=long_ago) for _ in range(20)]
    if lost == "claim_expired":  # claimed by a worker that vanished with the messages
        for job_id in jobs:
            database.run(lambda conn, job_id=job_id: claims.claim(conn, job_id, 1, now=long_ago, worker="gone"))
    clock = lambda: utcnow() + timedelta(seconds=1)  # noqa: E731
    # What each pass did, in the order it happened.
    events: list[str] = []
    sending, second_read = threading.Event(), threading.Event()

    # The first pass, about to send its dispatches, waits until the second has read the jobs: the reconciler sends
    # inside its transaction, so the second reads while the first holds the rows, changed but not committed.
    first_dispatcher = Dispatcher(make_broker(redis_server_url), queue_name)
    send = first_dispatcher.send

    def send_once_the_second_has_read(dispatches, *, now):
        if dispatches:
            events.append("first sends")
            sending.set()
            if not second_read.wait(timeout=60):
                events.append("first gave up waiting")
        sent = send(dispatches, now=now)
        if dispatches:
            events.append("first sent")
        return sent

    first_dispatcher.send = send_once_the_second_has_read

    def first_committed() -> None:
        if "first committed" not in events:
            events.append("first committed")

    def second_reads(rows: list) -> None:
        if not second_read.is_set():
            events.append(f"second read {len(rows)}")
            second_read.set()

    first_ledger = WatchedLedger(database, after_commit=first_committed)
    first = make_reconciler(settings, first_ledger, first_dispatcher, clock=clock)
    second = make_reconciler(settings, WatchedLedger(database, after_read=second_reads), dispatcher, clock=clock)
    reports = []
    first_pass = threading.Thread(target=lambda: reports.append(first.run_once()))
    first_pass.start()
    assert sending.wait(timeout=60)
    second_report = second.run_once()
    first_pass.join()

    # The passes overlapped: the second read all the jobs after the first changed them and before it committed.
    assert events == ["first sends", f"second read {len(jobs)}", "first sent", "first committed"]
    (first_report,) = reports
    assert first_report.expired + first_report.redispatched == len(jobs)
    assert second_report.expired + second_report.redispatched == 0
    assert queued_messages(settings.redis_url, queue_name) == len(jobs)


def test_a_due_job_waiting_in_redis_behind_a_backlog_is_not_redispatched(make_settings, database, dispatcher):
    settings = make_settings(WJP_RECONCILE_GRACE="0")
    for _ in range(30):
        submit(database, dispatcher, settings)

    report = make_reconciler(settings, database, dispatcher, clock=lambda: utcnow() + timedelta(seconds=5)).run_once()

    assert report.checked == 30
    assert report.redispatched == 0


def test_a_retry_waiting_in_the_delay_queue_is_not_redispatched(make_settings, database, dispatcher):
    settings = make_settings(WJP_RECONCILE_GRACE="0")
    job_id = submit(database, None, settings)
    now = utcnow()
    database.run(lambda conn: claims.claim(conn, job_id, 1, now=now, worker="w"))
    retry = database.run(
        lambda conn: transitions.schedule_retry(conn, job_id, 1, now=now, due_at=now + timedelta(seconds=30), error="x")
    )
    dispatcher.send([retry], now=now)

    later = make_reconciler(settings, database, dispatcher, clock=lambda: now + timedelta(seconds=31))
    report = later.run_once()

    # The pass did consider the retry, now overdue, and found its message waiting
    assert (report.checked, report.redispatched) == (1, 0)


def test_a_send_at_job_a_minute_ahead_is_not_delivered_before_its_time_and_is_after_it(
    make_settings, database, dispatcher
):
    settings = make_settings()
    now = utcnow()
    send_at = now + timedelta(minutes=1)
    request = NewNotification(
        idempotency_key="later", recipient="ops", channel="log", message="hi", max_attempts=5, send_at=send_at
    )
    # The API parks only jobs due within the horizon in Redis; this one waits in the ledger
    job_id = database.run(lambda conn: intake.accept(conn, request, now=now, dispatch_now=False)).job_id
    channel = RecordingChannel()

    with running_worker(settings, database, channels={"log": channel}):
        before = make_reconciler(settings, database, dispatcher, clock=lambda: now + timedelta(seconds=5)).run_once()
        assert before.redispatched == 0
        assert database.run(lambda conn: queries.get_job(conn, job_id, scope=None)).status is Status.PENDING

    # A minute later (the clocks of the pass and the worker are moved, not slept)
    after = lambda: utcnow() + timedelta(seconds=61)  # noqa: E731
    with running_worker(settings, database, channels={"log": channel}, clock=after):
        assert make_reconciler(settings, database, dispatcher, clock=after).run_once().redispatched == 1
        job = wait_for_status(database, job_id)
    assert job.status is Status.SUCCESS
    # One attempt, made only once the clocks said it was due (its start is stamped by the database's clock, which
    # this test cannot move).
    assert len(database.run(lambda conn: queries.list_attempts(conn, job_id))) == 1
    assert channel.count(job_id) == 1
