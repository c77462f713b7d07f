"""Hosts whose clocks disagree with the database's: a claim's time and the reconciler's cutoff both come from the
database, so skew neither cuts a live claim short nor keeps a dead one, and WJP_VISIBILITY_TIMEOUT's margins
hold however far a worker's or a reconciler's clock has drifted."""

from __future__ import annotations

from datetime import timedelta

import pytest

from actors.delivery import Delivery
from ledger import claims, maintenance, queries
from ledger.states import Status
from ledger.timestamps import utcnow
from tests.actors.conftest import RecordingChannel, make_reconciler, submit

SKEW = timedelta(hours=1)


def skewed(offset: timedelta):
    return lambda: utcnow() + offset


def database_time(database):
    return database.run(maintenance.database_time)


@pytest.mark.parametrize("offset", [SKEW, -SKEW], ids=["ahead", "behind"])
def test_a_worker_whose_clock_is_off_claims_at_the_databases_time(make_settings, database, dispatcher, offset):
    settings = make_settings()
    # Due by either clock: what is due is the worker's to say (it re-parks what it finds early, by its clock).
    job_id = submit(database, None, settings, now=utcnow() - 2 * SKEW)
    channel = RecordingChannel()
    delivery = Delivery(
        database=database, dispatcher=dispatcher, channels={"log": channel}, settings=settings, clock=skewed(offset)
    )

    before = database_time(database)
    delivery(str(job_id), f"{job_id}.1")
    assert delivery.flush(10)
    after = database_time(database)

    assert channel.count(job_id) == 1
    (attempt,) = database.run(lambda conn: queries.list_attempts(conn, job_id))
    # An attempt starts at its claim's time, which the database's clock stamped.
    assert before <= attempt.started_at <= after


def test_a_reconciler_whose_clock_runs_ahead_leaves_a_fresh_claim_alone(make_settings, database, dispatcher):
    settings = make_settings(WJP_VISIBILITY_TIMEOUT="60")
    job_id = submit(database, None, settings)
    now = database_time(database)
    assert database.run(lambda conn: claims.claim(conn, job_id, 1, now=now, worker="busy:1:t")) is not None

    report = make_reconciler(settings, database, dispatcher, clock=skewed(SKEW)).run_once()

    assert (report.expired, report.failed) == (0, 0)
    assert database.run(lambda conn: queries.get_job(conn, job_id, scope=None)).status is Status.PROCESSING


def test_a_reconciler_whose_clock_runs_behind_still_takes_back_an_expired_claim(make_settings, database, dispatcher):
    settings = make_settings(WJP_VISIBILITY_TIMEOUT="60")
    long_ago = database_time(database) - timedelta(seconds=61)
    job_id = submit(database, None, settings, now=long_ago)
    assert database.run(lambda conn: claims.claim(conn, job_id, 1, now=long_ago, worker="gone:1:t")) is not None

    report = make_reconciler(settings, database, dispatcher, clock=skewed(-SKEW)).run_once()

    assert (report.expired, report.failed) == (1, 0)
    assert database.run(lambda conn: queries.get_job(conn, job_id, scope=None)).status is Status.RETRY
