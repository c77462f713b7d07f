"""Operators' limits per destination and the count of jobs waiting on each, on PostgreSQL and SQLite."""

from __future__ import annotations

from ledger import destinations
from ledger.destinations import Limits
from ledger.states import Status
from tests.ledger.conftest import T0, claim, job_in, submit


def test_an_override_is_set_changed_and_cleared_per_destination(database):
    key = "webhook:hooks.example.com:443"
    database.run(lambda conn: destinations.set_limits(conn, key, Limits(5, None), now=T0), transaction=True)
    database.run(lambda conn: destinations.set_limits(conn, "log", Limits(None, 2.5), now=T0), transaction=True)
    assert database.run(destinations.overrides) == {key: Limits(5, None), "log": Limits(None, 2.5)}

    database.run(lambda conn: destinations.set_limits(conn, key, Limits(None, 10.0), now=T0), transaction=True)
    assert database.run(destinations.overrides)[key] == Limits(None, 10.0)

    assert database.run(lambda conn: destinations.clear_limits(conn, key), transaction=True)
    assert not database.run(lambda conn: destinations.clear_limits(conn, key), transaction=True)
    assert database.run(destinations.overrides) == {"log": Limits(None, 2.5)}


def test_limits_both_back_to_the_default_leave_no_override(database):
    database.run(lambda conn: destinations.set_limits(conn, "log", Limits(3, 1.0), now=T0), transaction=True)
    database.run(lambda conn: destinations.set_limits(conn, "log", Limits(None, None), now=T0), transaction=True)
    assert database.run(destinations.overrides) == {}


def test_waiting_counts_the_pending_and_retrying_jobs_of_each_destination(database):
    for key in ("a", "b", "c"):
        submit(database, key, destination="webhook:a.example:443")
    submit(database, "d", destination="email:outbox")
    claim(database, submit(database, "e", destination="email:outbox"))
    job_in(database, Status.SUCCESS, "f")

    assert database.run(destinations.waiting) == {"webhook:a.example:443": 3, "email:outbox": 1}
    assert database.run(lambda conn: destinations.waiting(conn, ["email:outbox", "sms:x"])) == {"email:outbox": 1}


def test_a_job_without_a_destination_of_its_own_waits_on_its_channel(database):
    submit(database, "plain", channel="log")
    assert database.run(destinations.waiting) == {"log": 1}
