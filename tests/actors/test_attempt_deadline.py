"""An attempt never outlives its claim: a real worker, on real Redis and the ledger, against a relay that stalls."""

from __future__ import annotations

import time
from datetime import timedelta

from ledger import queries
from ledger.states import Status
from tests.actors.channels.slow_peers import SlowRelay
from tests.actors.conftest import running_worker, submit, wait_for_status


def test_an_attempt_on_a_relay_answering_each_command_slowly_ends_inside_its_claim_and_goes_to_retry(
    make_settings, database, dispatcher
):
    # Each reply comes within the 2.25 s an SMTP operation may wait, but a transaction takes twelve seconds.
    relay = SlowRelay(delay=2.0)
    settings = make_settings(
        WJP_SMTP_URL=f"smtp://127.0.0.1:{relay.port}", WJP_VISIBILITY_TIMEOUT="3", WJP_BACKOFF_INITIAL="600"
    )
    try:
        with running_worker(settings, database):
            sent = time.monotonic()  # the claim comes later, so it expires after this plus the visibility timeout
            job_id = submit(database, dispatcher, settings, channel="email", recipient="ada@example.com")
            job = wait_for_status(database, job_id, {Status.RETRY, Status.SUCCESS, Status.FAILED})
            [attempt] = database.run(lambda conn: queries.list_attempts(conn, job_id))
            expired = sent + settings.visibility_timeout
            give_up = time.monotonic() + 15
            while not any(answer.at > expired for answer in relay.answers) and time.monotonic() < give_up:
                time.sleep(0.05)  # the relay records its next reply when it falls due
    finally:
        relay.stop()

    assert (job.status, job.attempts) == (Status.RETRY, 1)
    assert attempt.outcome == "transient_error" and "deadline" in attempt.error
    assert attempt.finished_at < attempt.started_at + timedelta(seconds=settings.visibility_timeout)
    assert [answer.peer_closed for answer in relay.answers if answer.at > expired] == [True]
    assert relay.accepted == []

