"""A worker across a real ledger outage, its PostgreSQL stopped and started again: the result of a delivery made
just before the server went away is recorded once it is back, as long as the claim is still the worker's, so the
job is not delivered again; a message whose claim met the outage comes back and is delivered after it."""

from __future__ import annotations

import logging

import psycopg
import sqlalchemy.exc

from actors.channels.base import Notification
from ledger.errors import LedgerUnavailable
from ledger.states import Status
from tests.actors.conftest import RecordingChannel, running_worker, submit, wait_for_status
from tests.pg_cluster import Outage


class OutageDuringDelivery(RecordingChannel):
    """Delivers, and stops the ledger's server as it does (the first delivery only); the server comes back later."""

    def __init__(self, outage: Outage) -> None:
        super().__init__(delay=0.2)
        self.outage = outage

    def deliver(self, notification: Notification) -> str:
        self.outage.begin()
        return super().deliver(notification)


def ledger_outages_logged(records: list[logging.LogRecord]) -> list[LedgerUnavailable]:
    """The `LedgerUnavailable`s the worker logged that a real driver error caused, not a stand-in."""
    errors = [r.exc_info[1] for r in records if r.exc_info and isinstance(r.exc_info[1], LedgerUnavailable)]
    driver_errors = (psycopg.OperationalError, sqlalchemy.exc.OperationalError)
    return [error for error in errors if isinstance(error.__cause__, driver_errors)]


def test_a_result_is_recorded_after_a_ledger_outage_shorter_than_the_claim_and_not_delivered_again(
    make_private_settings, private_ledger, private_cluster, dispatcher
):
    # Seen in a chaos run with PostgreSQL down for 4 s: a worker gave up recording its result half a visibility
    # timeout after the delivery, though nobody could take its claim before the attempt's time limit; the
    # reconciler then took the claim back and the job was attempted again. Down longer than half of it here.
    settings = make_private_settings(WJP_VISIBILITY_TIMEOUT="10")
    outage = Outage(private_cluster, down_for=5.5)
    channel = OutageDuringDelivery(outage)
    job_id = submit(private_ledger, dispatcher, settings)

    with running_worker(settings, private_ledger, channels={"log": channel}, threads=1):
        outage.wait_over()
        job = wait_for_status(private_ledger, job_id, timeout=20)

    assert (job.status, job.attempts) == (Status.SUCCESS, 1)
    assert channel.count(job_id) == 1


def test_a_message_whose_claim_meets_a_ledger_outage_comes_back_and_is_delivered_once_after_it(
    make_private_settings, private_ledger, private_cluster, dispatcher, caplog
):
    settings = make_private_settings()
    channel = RecordingChannel()
    job_id = submit(private_ledger, dispatcher, settings)  # recorded and sent; no worker has seen it yet
    outage = Outage(private_cluster, down_for=3.0)
    outage.begin()

    with caplog.at_level(logging.ERROR), running_worker(settings, private_ledger, channels={"log": channel}, threads=1):
        outage.wait_over()
        job = wait_for_status(private_ledger, job_id, timeout=30)

    # The claim met the stopped server: psycopg's error, as `LedgerUnavailable`, sent the message back for later.
    assert ledger_outages_logged(caplog.records)
    assert (job.status, job.attempts) == (Status.SUCCESS, 1)
    assert channel.count(job_id) == 1
