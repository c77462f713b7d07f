"""The ledger is the scheduler: only what falls due within the schedule horizon waits in Dramatiq's delay queue
(read in FIFO order into a bounded prefetch), so a job due in seconds never waits behind retries due in an hour;
those wait in the ledger, and a reconciler pass sends them as they come due."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import dramatiq.worker
import pytest

from actors.broker import Dispatcher
from ledger import intake, queries
from ledger.database import Database
from ledger.intake import NewNotification
from ledger.states import Status
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from tests.actors.conftest import RecordingChannel, make_reconciler, running_worker, wait_for_status
from tests.actors.test_reconciler import queued_messages

HOUR = 3600
PARKED = 1500


@pytest.fixture
def database(postgres_db: Database) -> Database:
    return postgres_db


def accept(database: Database, dispatcher: Dispatcher, count: int, *, send_in: float | None = None) -> list[uuid.UUID]:
    """`count` notifications recorded and sent as the API does (a `send_at` inside the horizon goes to the delay
    queue at once), in one transaction and one round trip to Redis."""
    now = utcnow()
    send_at = None if send_in is None else now + timedelta(seconds=send_in)
    requests = [
        NewNotification(uuid.uuid4().hex, "someone", "log", "hello", max_attempts=5, send_at=send_at)
        for _ in range(count)
    ]
    results = database.run(
        lambda conn: [intake.accept(conn, r, now=now, dispatch_now=True) for r in requests], transaction=True
    )
    dispatcher.send([Dispatch(r.job_id, r.dispatch_seq, r.next_attempt_at) for r in results], now=now)
    return [r.job_id for r in results]


def wait_for_count(database: Database, status: Status, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while (found := database.run(queries.count_by_status)[status]) < count:
        assert time.monotonic() < deadline, f"{found} jobs {status}, expected {count}"
        time.sleep(0.1)


def test_jobs_due_in_seconds_are_delivered_on_time_behind_a_thousand_retries_due_in_an_hour(
    make_settings, database, dispatcher, monkeypatch
):
    # A worker whose delay-queue prefetch (`dramatiq_delay_queue_prefetch`) holds far fewer messages than wait
    settings = make_settings(WJP_BACKOFF_INITIAL=str(HOUR), WJP_BACKOFF_MAX=str(HOUR), WJP_BACKOFF_JITTER="0")
    monkeypatch.setattr(dramatiq.worker, "DELAY_QUEUE_PREFETCH", 20)
    channel = RecordingChannel(failures=PARKED)
    with running_worker(settings, database, channels={"log": channel}, threads=8):
        # Given 1,500 jobs whose first attempt failed (a receiver outage): each retries in an hour
        retrying = accept(database, dispatcher, PARKED)
        wait_for_count(database, Status.RETRY, PARKED)
        # When 5 jobs are sent for 3 s from now
        scheduled = accept(database, dispatcher, 5, send_in=3)
        # Then they are delivered, each at its time and not before: they did not wait behind the retries
        done = [wait_for_status(database, job_id, timeout=30) for job_id in scheduled]

    retries_due = min(
        database.run(lambda conn, j=j: queries.get_job(conn, j, scope=None)).next_attempt_at for j in retrying
    )
    for job in done:
        [attempt] = database.run(lambda conn, j=job.id: queries.list_attempts(conn, j))
        assert (job.status, attempt.outcome) == (Status.SUCCESS, "success")
        # The delay queue's eta is in whole milliseconds.
        assert job.send_at - timedelta(milliseconds=2) <= attempt.started_at < retries_due
    assert retries_due > utcnow() + timedelta(seconds=HOUR - 300)

    # The retries wait in the ledger, not in Redis: a pass now sends none of them, and the stats equal the ledger
    reconciler = make_reconciler(settings, database, dispatcher)
    assert reconciler.run_once().redispatched == 0
    assert queued_messages(settings.redis_url, settings.queue) == 0
    stats = database.run(lambda conn: queries.queue_stats(conn, now=utcnow()))
    assert stats.counts == database.run(queries.count_by_status)
    assert (stats.counts[Status.RETRY], stats.counts[Status.SUCCESS]) == (PARKED, 5)

    # A pass as they come within the horizon sends each once, under a seq no earlier message had
    later = make_reconciler(settings, database, dispatcher, clock=lambda: utcnow() + timedelta(seconds=HOUR - 20))
    assert later.run_once().redispatched == PARKED
    assert later.run_once().redispatched == 0
    assert dispatcher.missing([Dispatch(job_id, 2, utcnow()) for job_id in retrying]) == []
