"""`last_error` shows producers the receiver's answer, never the detail of our own set-up: a real SMTP server
refuses our login, and a job's channel is not enabled on the worker."""

from __future__ import annotations

import logging
import uuid

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from actors.broker import Dispatcher, make_broker
from actors.channels import build_channels
from actors.delivery import SETUP_FAILURE, Delivery
from ledger import queries
from ledger.states import Status
from tests.actors.conftest import RecordingChannel, submit
from tests.conftest import free_port


class Relay:
    """An aiosmtpd handler: accepts every message, refuses recipients named `refused@...` with a 550."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if address.startswith("refused@"):
            return "550 5.1.1 refused@example.com: mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        return "250 Message accepted for delivery"


@pytest.fixture
def relay_port():
    """A relay on 127.0.0.1 that offers AUTH and accepts only the login relay-user / right-password."""

    def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:  # type: ignore[no-untyped-def]
        success = (auth_data.login, auth_data.password) == (b"relay-user", b"right-password")
        return AuthResult(success=success, handled=False)

    port = free_port()
    # Only PLAIN is offered, so one failed login is one 535.
    options = {"auth_required": True, "auth_require_tls": False, "auth_exclude_mechanism": ["LOGIN"]}
    options["authenticator"] = authenticator
    controller = Controller(Relay(), hostname="127.0.0.1", port=port, **options)
    controller.start()
    yield port
    controller.stop()


def deliver_email(make_settings, database, smtp_url: str, recipient: str) -> queries.JobView:
    settings = make_settings(WJP_SMTP_URL=smtp_url, WJP_BACKOFF_INITIAL="60", WJP_EMAIL_FROM="ops@example.com")
    delivery = Delivery(
        database=database,
        dispatcher=Dispatcher(make_broker(settings.redis_url), settings.queue),
        channels=build_channels(settings.channels),
        settings=settings,
    )
    job_id = submit(database, None, settings, channel="email", recipient=recipient)
    delivery(str(job_id), f"{job_id}.1")
    return job_of(database, job_id)


def job_of(database, job_id: uuid.UUID) -> queries.JobView:
    job = database.run(lambda conn: queries.get_job(conn, job_id, scope=None))
    assert job is not None
    return job


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_a_login_the_relay_refuses_reads_as_our_own_set_up_to_producers_and_in_full_in_the_log(
    make_settings, database, relay_port, caplog
):
    url = f"smtp://relay-user:wrong-password@127.0.0.1:{relay_port}?allow_plaintext_auth=true"

    with caplog.at_level(logging.WARNING, logger="wjp.worker"):
        job = deliver_email(make_settings, database, url, "ada@example.com")

    assert job.status is Status.RETRY
    assert job.last_error == SETUP_FAILURE
    attempts = database.run(lambda conn: queries.list_attempts(conn, job.id))
    assert [attempt.error for attempt in attempts] == [SETUP_FAILURE]
    assert "535" in caplog.text and "SMTPAuthenticationError" in caplog.text


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_a_recipient_the_relay_refuses_is_the_receivers_answer_and_shown_as_it_is(make_settings, database, relay_port):
    url = f"smtp://relay-user:right-password@127.0.0.1:{relay_port}?allow_plaintext_auth=true"

    job = deliver_email(make_settings, database, url, "refused@example.com")

    assert job.status is Status.FAILED
    assert "550" in job.last_error and "mailbox unavailable" in job.last_error


def test_a_job_for_a_channel_this_worker_has_not_enabled_fails_with_a_generic_sentence_and_logs_which(
    make_settings, database, caplog
):
    settings = make_settings()
    delivery = Delivery(
        database=database,
        dispatcher=Dispatcher(make_broker(settings.redis_url), settings.queue),
        channels={"log": RecordingChannel()},
        settings=settings,
    )
    job_id = submit(database, None, settings, channel="sms", recipient="+14155550123")

    with caplog.at_level(logging.WARNING, logger="wjp.worker"):
        delivery(str(job_id), f"{job_id}.1")

    job = job_of(database, job_id)
    assert (job.status, job.attempts, job.last_error) == (Status.FAILED, 1, SETUP_FAILURE)
    assert "'sms' is not enabled on this worker" in caplog.text
