"""A PostgreSQL cluster of the tests' own, with the ledger migrated on it, that a test may stop, restart and keep
down: the outage is a real server going away, not a stand-in. Imported by the conftests that offer it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from ledger.database import Database
from ledger.migrate import upgrade
from tests.chaos.servers import PostgresCluster, missing_postgres
from tests.conftest import reset_ledger, unavailable


@pytest.fixture(scope="session")
def private_cluster() -> Iterator[PostgresCluster]:
    """Made once per session (initdb takes seconds); each test finds it running (see `private_ledger`)."""
    reason = missing_postgres()
    if reason:
        unavailable(reason)
    cluster = PostgresCluster()
    try:
        cluster.init()
        cluster.start()
        database = Database(cluster.url, pool_size=1)
        upgrade(database)
        database.dispose()
        yield cluster
    finally:
        cluster.stop()


#: Outages begun and not yet known to be over: the next `private_ledger` waits for them, so that a test that
#: failed midway leaves no server start behind to race with its own.
_outages: list[Outage] = []


@pytest.fixture
def private_ledger(private_cluster: PostgresCluster) -> Iterator[Database]:
    """The ledger on `private_cluster`, emptied; whatever the test stopped is started again afterwards."""
    _running_again(private_cluster)
    database = Database(private_cluster.url, pool_size=5)
    reset_ledger(database)
    yield database
    database.dispose()
    _running_again(private_cluster)


def _running_again(cluster: PostgresCluster) -> None:
    while _outages:
        _outages.pop().over.wait(60)
    if not cluster.running:
        cluster.start()


class Outage:
    """Stops the cluster now (returning once it refuses connections) and starts it `down_for` seconds later, from
    a thread of its own, so that whoever stopped it (a channel delivering) carries on meanwhile."""

    def __init__(self, cluster: PostgresCluster, down_for: float) -> None:
        self.cluster = cluster
        self.down_for = down_for
        self.over = threading.Event()
        self.begun = False
        self._beginning = threading.Lock()
        self._errors: list[BaseException] = []

    def begin(self) -> None:
        """Only the first call stops the server; any later one returns at once."""
        with self._beginning:
            if self.begun:
                return
            self.begun = True
        _outages.append(self)
        self.cluster.shut_down()
        threading.Thread(target=self._end_later, name="pg-outage", daemon=True).start()

    def _end_later(self) -> None:
        try:
            time.sleep(self.down_for)
            self.cluster.start()
        except BaseException as exc:
            self._errors.append(exc)
        finally:
            self.over.set()

    def wait_over(self, timeout: float = 60.0) -> None:
        """Block until the server is back (the outage must have begun); raise what starting it raised."""
        assert self.over.wait(timeout), f"PostgreSQL was not started again within {timeout}s"
        if self._errors:
            raise self._errors[0]
