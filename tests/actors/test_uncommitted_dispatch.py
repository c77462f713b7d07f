"""A reconciler pass sends its messages before it commits, and an idle worker fetches one at once: a message
whose dispatch the ledger has not committed yet is looked at again shortly, never dropped as stale."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import timedelta
from typing import Any, TypeVar

import pytest
import redis

from actors.broker import Dispatcher, make_broker
from ledger import intake, queries
from ledger.database import Database
from ledger.intake import NewNotification
from ledger.states import Status
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from tests.actors.conftest import RecordingChannel, make_reconciler, running_worker, submit, wait_for_status

T = TypeVar("T")


@pytest.fixture
def database(postgres_db: Database) -> Database:
    return postgres_db


class HeldBeforeCommit:
    """The reconciler's ledger, whose transactions hold still once their work is done (the pass has sent its
    messages) and commit only when the test sets `commit`."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.sent = threading.Event()
        self.commit = threading.Event()

    def run(self, operation: Callable[[Any], T], *, transaction: bool = False, kept: bool = False) -> T:
        if not transaction:
            return self.database.run(operation, kept=kept)

        def then_hold(conn: Any) -> T:
            result = operation(conn)
            self.sent.set()
            assert self.commit.wait(30)
            return result

        return self.database.run(then_hold, transaction=True)


class CountedRuns:
    """A worker's ledger that counts the units of work it has finished, so a test can wait for them."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.finished = 0
        self.changed = threading.Condition()

    def run(self, operation: Callable[[Any], T], **options: Any) -> T:
        try:
            return self.database.run(operation, **options)
        finally:
            with self.changed:
                self.finished += 1
                self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.finished >= count, timeout), f"{self.finished} runs"


def test_a_message_the_worker_gets_before_the_pass_that_sent_it_commits_is_delivered_without_another_pass(
    make_settings, database, dispatcher
):
    settings = make_settings(WJP_RECONCILE_GRACE="0")
    # Given a due job whose message Redis lost, and an idle worker
    job_id = submit(database, None, settings, now=utcnow() - timedelta(seconds=1))
    channel = RecordingChannel()
    worker_ledger = CountedRuns(database)
    held = HeldBeforeCommit(database)
    reports = []
    with running_worker(settings, worker_ledger, channels={"log": channel}):  # type: ignore[arg-type]
        # When a pass re-dispatches it and, before it commits, the worker tries to claim (READ COMMITTED: the old
        # seq) and then reads the job (still the old seq)
        reconciler = make_reconciler(settings, held, dispatcher)  # type: ignore[arg-type]
        passing = threading.Thread(target=lambda: reports.append(reconciler.run_once()))
        passing.start()
        assert held.sent.wait(20)
        worker_ledger.wait_for(2)
        assert database.run(lambda conn: queries.dispatch_state(conn, job_id)).dispatch_seq == 1
        held.commit.set()
        passing.join(20)
        # Then the job is delivered, once, by that message: no second pass runs
        job = wait_for_status(database, job_id, timeout=15)

    assert [report.redispatched for report in reports] == [1]
    assert (job.status, job.attempts, channel.count(job_id)) == (Status.SUCCESS, 1, 1)


def test_after_a_flushall_one_pass_gets_every_pending_job_delivered_by_idle_workers(
    make_settings, database, private_redis
):
    settings = make_settings(REDIS_URL=private_redis.url, WJP_RECONCILE_GRACE="0")
    dispatcher = Dispatcher(make_broker(private_redis.url), settings.queue)
    # Given 300 PENDING jobs whose messages Redis lost (FLUSHALL)
    now = utcnow()
    requests = [NewNotification(uuid.uuid4().hex, "someone", "log", "hello", max_attempts=5) for _ in range(300)]
    results = database.run(
        lambda conn: [intake.accept(conn, r, now=now, dispatch_now=True) for r in requests], transaction=True
    )
    dispatcher.send([Dispatch(r.job_id, r.dispatch_seq, r.next_attempt_at) for r in results], now=now)
    redis.Redis.from_url(private_redis.url).flushall()
    channel = RecordingChannel()
    with ExitStack() as workers:
        # and two idle worker processes listening on the queue
        for _ in range(2):
            workers.enter_context(running_worker(settings, database, channels={"log": channel}))
        time.sleep(0.5)
        # When a single pass runs
        report = make_reconciler(settings, database, dispatcher).run_once()
        # Then every job is delivered
        for result in results:
            wait_for_status(database, result.job_id, timeout=60)

    assert report.redispatched == 300
    assert database.run(queries.count_by_status)[Status.SUCCESS] == 300
    assert sorted(channel.deliveries) == sorted((r.job_id, 1) for r in results)
