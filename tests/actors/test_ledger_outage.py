"""A worker across a short ledger outage: the result of a delivery made just before the ledger went away is
recorded once it is back, as long as the claim is still the worker's, so the job is not delivered again."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from actors.channels.base import Notification
from ledger.database import Database
from ledger.errors import LedgerUnavailable
from ledger.states import Status
from tests.actors.conftest import RecordingChannel, running_worker, submit, wait_for_status

T = TypeVar("T")


class FlakyLedger:
    """The test's ledger, unreachable for the workers until `down_until` (monotonic)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.down_until = 0.0

    def run(self, operation: Callable[[Any], T], *, transaction: bool = False, kept: bool = False) -> T:
        if time.monotonic() < self.down_until:
            raise LedgerUnavailable("connection refused (the test's outage)")
        return self.database.run(operation, transaction=transaction, kept=kept)


class OutageDuringDelivery(RecordingChannel):
    """Delivers, and the ledger goes away while it does."""

    def __init__(self, ledger: FlakyLedger, outage: float) -> None:
        super().__init__(delay=0.2)
        self.ledger = ledger
        self.outage = outage

    def deliver(self, notification: Notification) -> str:
        self.ledger.down_until = time.monotonic() + self.outage
        return super().deliver(notification)


def test_a_result_is_recorded_after_a_ledger_outage_shorter_than_the_claim_and_not_delivered_again(
    make_settings, database, dispatcher
):
    # Seen in a chaos run with PostgreSQL down for 4 s: a worker gave up recording its result half a visibility
    # timeout after the delivery, though nobody could take its claim before the attempt's time limit; the
    # reconciler then took the claim back and the job was attempted again.
    settings = make_settings(WJP_VISIBILITY_TIMEOUT="4")
    ledger = FlakyLedger(database)
    channel = OutageDuringDelivery(ledger, outage=2.2)
    job_id = submit(database, dispatcher, settings)

    with running_worker(settings, ledger, channels={"log": channel}, threads=1):
        job = wait_for_status(database, job_id, timeout=10)

    assert (job.status, job.attempts) == (Status.SUCCESS, 1)
    assert channel.count(job_id) == 1
