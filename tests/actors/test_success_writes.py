"""A worker thread hands its success to the process's success batcher and takes its next message without waiting
for the write; a worker that stops writes what it was handed before it exits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ledger import queries
from ledger.database import Database
from ledger.errors import LedgerUnavailable
from ledger.states import Status
from tests.actors.conftest import RecordingChannel, running_worker, submit, wait_for_status

T = TypeVar("T")
SUCCESS_WRITER = "wjp-successes"


class HeldSuccesses:
    """The test's ledger, except that the success batcher's statements wait for `release`."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.release = threading.Event()

    def run(self, operation: Callable[[Any], T], *, transaction: bool = False, kept: bool = False) -> T:
        if threading.current_thread().name == SUCCESS_WRITER:
            assert self.release.wait(20)
        return self.database.run(operation, transaction=transaction, kept=kept)


class UnreachableForSuccesses:
    """The test's ledger, unreachable for the success batcher until `reachable_at` (monotonic)."""

    def __init__(self, database: Database, outage: float) -> None:
        self.database = database
        self.reachable_at = time.monotonic() + outage
        self.refused = 0

    def run(self, operation: Callable[[Any], T], *, transaction: bool = False, kept: bool = False) -> T:
        if threading.current_thread().name == SUCCESS_WRITER and time.monotonic() < self.reachable_at:
            self.refused += 1
            raise LedgerUnavailable("connection refused (the test's outage)")
        return self.database.run(operation, transaction=transaction, kept=kept)


def test_a_thread_takes_its_next_message_while_its_success_is_still_being_written(
    make_settings, database, dispatcher
):
    settings = make_settings()
    ledger = HeldSuccesses(database)
    channel = RecordingChannel()
    jobs = [submit(database, dispatcher, settings) for _ in range(3)]

    with running_worker(settings, ledger, channels={"log": channel}, threads=1):
        deadline = time.monotonic() + 10
        while len(channel.deliveries) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        # One thread delivered all three while none of their successes could be written.
        assert sorted(job for job, _ in channel.deliveries) == sorted(jobs)
        assert {wait_for_status(database, job, {Status.PROCESSING}).status for job in jobs} == {Status.PROCESSING}
        ledger.release.set()
        for job in jobs:
            assert wait_for_status(database, job).status is Status.SUCCESS


def test_a_stopping_worker_writes_the_successes_it_was_handed_before_it_exits(make_settings, database, dispatcher):
    settings = make_settings()
    ledger = UnreachableForSuccesses(database, outage=1.5)
    channel = RecordingChannel()
    job_id = submit(database, dispatcher, settings)

    with running_worker(settings, ledger, channels={"log": channel}, threads=1):
        deadline = time.monotonic() + 10
        while channel.count(job_id) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    # The worker stopped while the write was riding out the outage, and waited for it: no polling needed here.
    job = database.run(lambda conn: queries.get_job(conn, job_id, scope=None))
    assert (job.status, job.attempts) == (Status.SUCCESS, 1)
    assert ledger.refused > 0
    assert channel.count(job_id) == 1
