"""POST → SUCCESS latency per minute (`ledger.health`): nearest-rank p50 and p99 of each minute and of the whole
window, only SUCCESS jobs finished inside the window counted."""

from __future__ import annotations

from datetime import timedelta

from ledger import activity, claims, health
from ledger.states import Status
from tests.ledger.conftest import SECOND, T0, claim, job_in, submit

NOW = T0 + timedelta(minutes=10)


def succeed(database, key: str, *, created, seconds: float) -> None:
    job_id = submit(database, key, now=created)
    assert claim(database, job_id, now=created) is not None
    done = created + timedelta(seconds=seconds)
    assert database.run(lambda conn: claims.succeed(conn, job_id, 1, now=done))


def test_latency_percentiles_per_minute_and_over_the_window(database):
    # Minute 2 of the window: ten jobs that took 1 to 10 s, all finishing at its start + 30 s.
    minute_two = T0 + timedelta(minutes=2, seconds=30)
    for seconds in range(1, 11):
        succeed(database, f"m2-{seconds}", created=minute_two - seconds * SECOND, seconds=seconds)
    succeed(database, "m5", created=T0 + timedelta(minutes=5), seconds=30)
    # Left out: a success before the window, and a failure inside it.
    succeed(database, "early", created=T0 - timedelta(minutes=5), seconds=1)
    job_in(database, Status.FAILED, "failed", now=T0 + timedelta(minutes=3))

    latency = database.run(lambda conn: health.success_latency(conn, now=NOW, minutes=10))

    assert [m.start for m in latency.minutes] == [T0 + timedelta(minutes=i) for i in range(10)]
    by_minute = {i: (m.jobs, m.p50, m.p99) for i, m in enumerate(latency.minutes) if m.jobs}
    assert by_minute == {2: (10, 5.0, 10.0), 5: (1, 30.0, 30.0)}
    assert all(m.p50 is None and m.p99 is None for m in latency.minutes if not m.jobs)
    # Eleven values, 1..10 and 30: the 6th is the median, the 11th the 99th percentile.
    assert (latency.p50, latency.p99) == (6.0, 30.0)


def test_an_empty_window_has_no_percentiles(database):
    latency = database.run(lambda conn: health.success_latency(conn, now=NOW, minutes=60))

    assert len(latency.minutes) == 60 and not any(m.jobs for m in latency.minutes)
    assert (latency.p50, latency.p99) == (None, None)


def test_jobs_finished_per_minute_by_outcome_agree_with_the_overviews_count(database):
    succeed(database, "a", created=T0 + timedelta(minutes=1), seconds=5)
    succeed(database, "b", created=T0 + timedelta(minutes=1), seconds=20)
    succeed(database, "c", created=T0 + timedelta(minutes=7), seconds=59)
    job_in(database, Status.FAILED, "failed", now=T0 + timedelta(minutes=7, seconds=30))
    job_in(database, Status.CANCELLED, "cancelled", now=T0 + timedelta(minutes=7))
    succeed(database, "late", created=NOW - SECOND, seconds=2)  # finishes after the window

    minutes = database.run(lambda conn: health.finished_per_minute(conn, now=NOW, minutes=10))

    found = {i: (m.succeeded, m.failed) for i, m in enumerate(minutes) if m.succeeded or m.failed}
    assert found == {1: (2, 0), 7: (1, 1)}
    assert minutes == database.run(lambda conn: activity.throughput(conn, now=NOW, minutes=10))
