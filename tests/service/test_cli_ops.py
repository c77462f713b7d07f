"""`wjp stats` and `wjp retry --failed [--since] [--channel]` as an operator runs them: real processes on the test's
ledger and Redis queue."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

import pytest

from ledger import claims, intake, queries, transitions
from ledger.database import Database
from ledger.intake import NewNotification
from ledger.states import Outcome, Status
from ledger.timestamps import rfc3339, utcnow
from tests.conftest import free_port
from tests.e2e.conftest import process_env, run_wjp


@pytest.fixture
def wjp(database: Database, redis_server_url: str, queue_name: str):
    def run(*args: str, **env: str):
        values = {
            "DATABASE_URL": database.engine.url.render_as_string(hide_password=False),
            "REDIS_URL": redis_server_url,
            "WJP_QUEUE": queue_name,
            "WJP_MAX_ATTEMPTS": "3",
            **env,
        }
        return run_wjp(list(args), process_env(**values))

    return run


def record(database: Database, *, channel: str = "email", at: datetime | None = None) -> uuid.UUID:
    recipient = {"email": "user@example.com", "webhook": "https://example.com/hook", "log": "ops"}[channel]
    request = NewNotification(
        idempotency_key=uuid.uuid4().hex, recipient=recipient, channel=channel, message="hello", max_attempts=1
    )
    now = at or utcnow()
    return database.run(lambda conn: intake.accept(conn, request, now=now, dispatch_now=True)).job_id


def failed(database: Database, *, channel: str = "email", at: datetime | None = None) -> uuid.UUID:
    """A job that failed for good at `at` after its one attempt."""
    at = at or utcnow()
    job_id = record(database, channel=channel, at=at - timedelta(seconds=1))

    def fail(conn) -> None:
        assert claims.claim(conn, job_id, 1, now=at, worker="test") is not None
        assert transitions.fail(conn, job_id, 1, now=at, outcome=Outcome.PERMANENT_ERROR, error="550 no such user")

    database.run(fail, transaction=True)
    return job_id


def succeeded(database: Database) -> uuid.UUID:
    job_id = record(database)

    def succeed(conn) -> None:
        assert claims.claim(conn, job_id, 1, now=utcnow(), worker="test") is not None
        assert claims.succeed(conn, job_id, 1, now=utcnow())

    database.run(succeed, transaction=True)
    return job_id


def job(database: Database, job_id: uuid.UUID) -> queries.JobView:
    return database.run(lambda conn: queries.get_job(conn, job_id, scope=None))


def retried(result) -> dict[str, int]:
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_wjp_stats_prints_one_row_per_status_with_its_count(wjp, database):
    record(database)
    record(database)
    failed(database)
    succeeded(database)

    result = wjp("stats")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["status", "value"]
    table = dict(line.split() for line in lines[1:])
    assert {s: table[s] for s in ("pending", "retry", "processing", "success", "failed", "cancelled")} == {
        "pending": "2",
        "retry": "0",
        "processing": "0",
        "success": "1",
        "failed": "1",
        "cancelled": "0",
    }
    assert table["avg_attempts_success"] == "1"
    assert float(table["oldest_due_age_seconds"]) >= 0


def test_wjp_retry_failed_requeues_every_failed_job_only_and_sends_their_messages(wjp, database, redis_messages):
    first, second = failed(database), failed(database, channel="webhook")
    untouched = [record(database), succeeded(database)]
    queued_before = set(redis_messages.queued())

    result = wjp("retry", "--failed")

    assert result.returncode == 0, result.stderr
    assert retried(result) == {"retried": 2, "unsent": 0}
    for job_id in (first, second):
        view = job(database, job_id)
        assert (view.status, view.attempts, view.max_attempts) == (Status.PENDING, 1, 1 + 3)
    assert [job(database, job_id).status for job_id in untouched] == [Status.PENDING, Status.SUCCESS]
    # Each retried job's new dispatch is in Redis under its pinned id, ready for a worker
    assert set(redis_messages.queued()) - queued_before == {f"{first}.2", f"{second}.2"}


def test_wjp_retry_failed_with_a_channel_requeues_that_channel_only(wjp, database, redis_messages):
    email, webhook = failed(database, channel="email"), failed(database, channel="webhook")

    result = wjp("retry", "--failed", "--channel", "webhook")

    assert retried(result) == {"retried": 1, "unsent": 0}
    assert (job(database, email).status, job(database, webhook).status) == (Status.FAILED, Status.PENDING)
    assert f"{webhook}.2" in redis_messages.queued() and f"{email}.2" not in redis_messages.queued()


@pytest.mark.parametrize("since", ["1h", "RFC3339"])
def test_wjp_retry_failed_since_a_time_requeues_only_the_later_failures(wjp, database, since):
    now = utcnow()
    old, recent = failed(database, at=now - timedelta(hours=3)), failed(database, at=now - timedelta(minutes=10))
    value = rfc3339(now - timedelta(hours=1)) if since == "RFC3339" else since

    result = wjp("retry", "--failed", "--since", value)

    assert retried(result) == {"retried": 1, "unsent": 0}
    assert (job(database, old).status, job(database, recent).status) == (Status.FAILED, Status.PENDING)


def test_wjp_retry_without_the_failed_flag_or_with_a_bad_time_is_a_usage_error(wjp, database):
    failed_job = failed(database)

    for args in (["retry"], ["retry", "--failed", "--since", "yesterday"]):
        result = wjp(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert job(database, failed_job).status is Status.FAILED


def test_wjp_retry_with_redis_down_leaves_the_jobs_pending_for_the_reconciler_and_says_so(wjp, database):
    job_id = failed(database)

    result = wjp("retry", "--failed", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")

    assert result.returncode == 1
    assert retried(result) == {"retried": 1, "unsent": 1}
    assert "Traceback" not in result.stderr
    assert job(database, job_id).status is Status.PENDING
