"""Which answers of real receivers are throttling (the attempt is given back, a Retry-After pauses the destination):
a webhook or SMS 429, a 503 with Retry-After, an SMTP 421, or a 450/451 that says rate or too many."""

from __future__ import annotations

import pytest

from actors.channels import TransientError
from tests.actors.channels.conftest import HttpServer, Reply, SmtpServer
from tests.actors.channels.test_email import channel_for
from tests.actors.channels.test_email import notification as email_notification
from tests.actors.channels.test_sms import notification as sms_notification
from tests.actors.channels.test_sms import sms
from tests.actors.channels.test_webhook import channel, notification


@pytest.mark.parametrize(
    ("status", "headers", "throttled"),
    [
        (429, {"Retry-After": "7"}, True),
        (429, {}, True),
        (503, {"Retry-After": "30"}, True),
        (503, {}, False),
        (500, {"Retry-After": "30"}, False),
        (408, {}, False),
    ],
)
def test_a_webhook_429_or_503_with_retry_after_is_throttling_and_other_5xx_are_not(
    http_server: HttpServer, status: int, headers: dict[str, str], throttled: bool
) -> None:
    http_server.reply = Reply(status=status, headers=headers)

    with pytest.raises(TransientError) as caught:
        channel().deliver(notification(http_server.url))
    assert caught.value.throttled is throttled


def test_an_sms_gateways_429_is_throttling(http_server: HttpServer) -> None:
    http_server.reply = Reply(status=429, headers={"Retry-After": "12"})

    with pytest.raises(TransientError) as caught:
        sms(http_server.url).deliver(sms_notification())
    assert (caught.value.throttled, caught.value.retry_after) == (True, 12)


@pytest.mark.parametrize(
    ("rcpt", "data", "throttled"),
    [
        ("450 4.7.1 Rate limit exceeded, slow down", None, True),
        ("451 4.7.0 Too many messages from your IP", None, True),
        ("450 mailbox busy", None, False),
        (None, "421 4.7.0 Too busy, closing connection", True),
        (None, "451 4.7.1 sending rate exceeded", True),
        (None, "451 try later", False),
    ],
)
def test_an_smtp_421_or_a_450_451_about_rate_is_throttling(
    smtp_server: SmtpServer, rcpt: str | None, data: str | None, throttled: bool
) -> None:
    smtp_server.handler.rcpt_reply, smtp_server.handler.data_reply = rcpt, data

    with pytest.raises(TransientError) as caught:
        channel_for(smtp_server).deliver(email_notification())
    assert caught.value.throttled is throttled
