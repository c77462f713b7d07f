"""An operator changes one limit of a destination and keeps the other; both back to the default drop the row."""

from __future__ import annotations

import threading

import pytest

from ledger import destinations
from ledger.destinations import KEEP, Limits
from tests.ledger.conftest import T0

KEY = "webhook:hooks.example.com:443"


@pytest.fixture(autouse=True)
def no_overrides(database) -> None:
    """The PostgreSQL ledger is shared by the session's tests, and its reset leaves this table alone."""
    database.run(lambda conn: conn.execute(destinations.destinations.delete()), transaction=True)


def change(database, **limits) -> Limits:
    return database.run(lambda conn: destinations.change_limits(conn, KEY, now=T0, **limits), transaction=True)


def test_a_change_sets_the_limits_it_names_and_keeps_the_others(database):
    assert change(database, concurrency=5) == Limits(5, None)
    assert change(database, rate=2.5) == Limits(5, 2.5)
    assert change(database, concurrency=None) == Limits(None, 2.5)
    assert change(database) == Limits(None, 2.5)
    assert database.run(destinations.overrides) == {KEY: Limits(None, 2.5)}


def test_both_limits_back_to_the_default_leave_no_override(database):
    change(database, concurrency=3, rate=1.0)

    assert change(database, concurrency=None, rate=KEEP) == Limits(None, 1.0)
    assert change(database, rate=None) == Limits()
    assert database.run(destinations.overrides) == {}
    assert database.run(lambda conn: destinations.overrides_of(conn, KEY)) == Limits()


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_two_operators_changing_different_limits_at_once_both_take_effect(database):
    for _ in range(10):
        database.run(lambda conn: destinations.clear_limits(conn, KEY), transaction=True)
        start = threading.Barrier(2)

        def set_one(start: threading.Barrier = start, **limits) -> None:
            start.wait()
            change(database, **limits)

        threads = [threading.Thread(target=set_one, kwargs=k) for k in ({"concurrency": 7}, {"rate": 3.0})]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert database.run(destinations.overrides) == {KEY: Limits(7, 3.0)}
