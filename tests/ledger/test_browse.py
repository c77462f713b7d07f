"""The operators' listing across every producer (`ledger.browse`), FAILED jobs grouped by destination and error,
and bulk retries chosen by destination and error (`ledger.bulk_retry`), counted before they are made."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from ledger import api_keys, browse, bulk_retry, transitions
from ledger.browse import JobFilters
from ledger.states import Outcome, Status
from tests.ledger.conftest import SECOND, T0, claim, submit


def walk(database, filters: JobFilters, *, limit: int) -> list[list[uuid.UUID]]:
    pages, after = [], None
    while True:
        page = database.run(lambda conn, after=after: browse.browse_jobs(conn, filters, limit=limit, after=after))
        pages.append([job.id for job in page.jobs])
        if page.after is None:
            return pages
        after = page.after


def fail(database, job_id: uuid.UUID, error: str, *, now=T0) -> None:
    assert claim(database, job_id, now=now) is not None
    assert database.run(
        lambda conn: transitions.fail(conn, job_id, 1, now=now, outcome=Outcome.PERMANENT_ERROR, error=error),
    )


@pytest.mark.parametrize("branches", [browse.MAX_BRANCHES, 1], ids=["a-branch-per-scope", "one-statement"])
def test_operators_page_through_every_producers_jobs_newest_first(database, monkeypatch, branches):
    # Past MAX_BRANCHES branches, one plain statement lists them: the same pages either way.
    monkeypatch.setattr(browse, "MAX_BRANCHES", branches)
    key, _ = database.run(lambda conn: api_keys.create(conn, "shop", now=T0), transaction=True)
    # Alternating producers, one second apart; two share a created_at, so the id breaks the tie.
    created = [
        submit(database, f"k{i}", now=T0 + min(i, 5) * SECOND, scope=key.id if i % 2 else "") for i in range(7)
    ]

    pages = walk(database, JobFilters(), limit=3)

    assert [len(page) for page in pages] == [3, 3, 1]
    listed = [job for page in pages for job in page]
    tied = sorted(created[5:], reverse=True)
    assert listed == [*tied, *reversed(created[:5])]


def test_a_ledger_without_jobs_lists_an_empty_page(database):
    """No scope has a channel to make a branch of: no statement, and no error."""
    database.run(lambda conn: api_keys.create(conn, "shop", now=T0), transaction=True)

    assert walk(database, JobFilters(), limit=3) == [[]]
    assert walk(database, JobFilters(status=Status.FAILED), limit=3) == [[]]


def test_each_filter_narrows_the_listing(database):
    email = submit(database, "a", now=T0, destination="email:relay:25")
    webhook = submit(
        database, "b", now=T0 + SECOND, channel="webhook", recipient="https://h", destination="webhook:h:443"
    )
    later = submit(database, "c", now=T0 + 60 * SECOND, destination="email:relay:25")
    fail(database, later, "550", now=T0 + 60 * SECOND)

    def listed(**filters) -> list[uuid.UUID]:
        return [job for page in walk(database, JobFilters(**filters), limit=10) for job in page]

    assert listed(status=Status.FAILED) == [later]
    assert listed(status=Status.PENDING) == [webhook, email]
    assert listed(channel="webhook") == [webhook]
    assert listed(destination="email:relay:25") == [later, email]
    assert listed(created_after=T0 + SECOND) == [later, webhook]
    assert listed(created_before=T0 + SECOND) == [email]
    assert listed(created_after=T0, created_before=T0 + 60 * SECOND, channel="email") == [email]


def test_failures_are_grouped_by_destination_and_error_and_retried_by_group_after_being_counted(database):
    relay, hook = "email:relay:25", "webhook:h:443"
    for i, (destination, error) in enumerate([(relay, "550"), (relay, "550"), (relay, "421"), (hook, "550")]):
        fail(database, submit(database, f"k{i}", now=T0, destination=destination), error, now=T0 + i * SECOND)
    submit(database, "waiting", now=T0, destination=relay)

    groups = database.run(lambda conn: browse.failure_groups(conn, limit=10))

    found = [(g.destination, g.error, g.jobs) for g in groups]
    assert found == [(relay, "550", 2), (relay, "421", 1), (hook, "550", 1)]
    assert groups[0].last_failed_at == T0 + SECOND
    before = T0 + timedelta(minutes=1)
    chosen = bulk_retry.FailedJobs(failed_before=before, destination=relay, error="550")
    assert database.run(lambda conn: bulk_retry.count_failed(conn, chosen)) == 2
    every_550 = bulk_retry.FailedJobs(failed_before=before, error="550")
    assert database.run(lambda conn: bulk_retry.count_failed(conn, every_550)) == 3
    too_early = bulk_retry.FailedJobs(failed_before=before, error="550", created_before=T0)
    assert database.run(lambda conn: bulk_retry.count_failed(conn, too_early)) == 0
    # Batches of one: the loop a bulk retry runs ends with exactly the jobs it counted.
    sent = []
    while batch := database.run(
        lambda conn: bulk_retry.retry_failed(conn, chosen, now=before, extra_attempts=1, limit=1), transaction=True
    ):
        sent.extend(batch)
    assert len(sent) == 2 and {d.destination for d in sent} == {relay}
    remaining = database.run(lambda conn: browse.failure_groups(conn, limit=10))
    assert [(g.destination, g.error, g.jobs) for g in remaining] == [(relay, "421", 1), (hook, "550", 1)]
