"""The email channel against a real SMTP server (aiosmtpd on 127.0.0.1): delivery, errors, kept sessions and the outbox
directory."""

from __future__ import annotations

import email
import email.policy
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from actors.channels import ChannelConfig, PermanentError, TransientError
from actors.channels import email as email_channel
from actors.channels.email import EmailChannel
from tests.actors.channels.conftest import SmtpServer, free_port
from tests.actors.channels.mail import JOB, channel_for, notification, received


def test_a_notification_reaches_a_real_smtp_server_with_sender_recipient_and_headers(
    smtp_server: SmtpServer,
) -> None:
    receipt = channel_for(smtp_server).deliver(notification(subject="Shipped"))

    envelope = smtp_server.handler.envelopes[0]
    assert envelope.mail_from == "wjp@example.org"  # type: ignore[attr-defined]
    assert envelope.rcpt_tos == ["ada@example.com"]  # type: ignore[attr-defined]
    message = received(smtp_server)
    assert message["From"] == "wjp@example.org"
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Shipped"
    assert message["Message-ID"] == f"<{JOB}@wjp>"
    assert message["Date"]
    assert message.get_content_type() == "text/plain"
    assert message.get_content().replace("\r\n", "\n").strip() == "Your order has shipped.\nIt arrives on Monday."
    assert f"<{JOB}@wjp>" in receipt


def test_every_delivery_of_one_job_carries_the_same_message_id(smtp_server: SmtpServer) -> None:
    channel = channel_for(smtp_server)

    channel.deliver(notification(attempt=1))
    channel.deliver(notification(attempt=2))
    channel.deliver(notification(job_id=uuid.uuid4()))

    ids = [received(smtp_server, index)["Message-ID"] for index in range(3)]
    assert ids[0] == ids[1] == f"<{JOB}@wjp>"
    assert ids[2] != ids[0]


def test_without_a_subject_the_first_line_of_the_message_is_used(smtp_server: SmtpServer) -> None:
    channel_for(smtp_server).deliver(notification(message="  Your order has shipped.  \nDetails below."))

    assert received(smtp_server)["Subject"] == "Your order has shipped."


def test_a_subject_taken_from_a_long_first_line_is_cut_to_255_characters(smtp_server: SmtpServer) -> None:
    channel_for(smtp_server).deliver(notification(message="x" * 1000))

    assert received(smtp_server)["Subject"] == "x" * 255


def test_a_line_break_in_the_subject_cannot_add_a_header(smtp_server: SmtpServer) -> None:
    channel_for(smtp_server).deliver(notification(subject="Hello\r\nBcc: victim@example.com"))

    message = received(smtp_server)
    assert message["Bcc"] is None
    assert message["Subject"] == "Hello Bcc: victim@example.com"


def test_a_line_break_in_the_recipient_is_refused_and_nothing_is_sent(smtp_server: SmtpServer) -> None:
    with pytest.raises(PermanentError, match="line breaks"):
        channel_for(smtp_server).deliver(notification(recipient="ada@example.com\r\nBcc: eve@example.com"))

    assert smtp_server.handler.envelopes == []


def test_a_5xx_reply_to_rcpt_is_a_permanent_error(smtp_server: SmtpServer) -> None:
    smtp_server.handler.rcpt_reply = "550 no such user"

    with pytest.raises(PermanentError, match="550 no such user"):
        channel_for(smtp_server).deliver(notification())


def test_a_4xx_reply_to_rcpt_is_a_transient_error(smtp_server: SmtpServer) -> None:
    smtp_server.handler.rcpt_reply = "450 mailbox busy"

    with pytest.raises(TransientError, match="450"):
        channel_for(smtp_server).deliver(notification())


def test_a_4xx_reply_to_data_is_a_transient_error(smtp_server: SmtpServer) -> None:
    smtp_server.handler.data_reply = "451 try later"

    with pytest.raises(TransientError, match="451 try later"):
        channel_for(smtp_server).deliver(notification())


def test_a_5xx_reply_to_data_is_a_permanent_error(smtp_server: SmtpServer) -> None:
    smtp_server.handler.data_reply = "554 message rejected as spam"

    with pytest.raises(PermanentError, match="554"):
        channel_for(smtp_server).deliver(notification())


def test_a_server_that_is_not_listening_is_a_transient_error() -> None:
    config = ChannelConfig(smtp_url=f"smtp://127.0.0.1:{free_port()}")

    with pytest.raises(TransientError):
        EmailChannel(config).deliver(notification())


# Kept sessions: a thread's messages share one SMTP session while it is young and answers.


def test_messages_sent_by_one_thread_share_one_session(smtp_server: SmtpServer) -> None:
    emails = channel_for(smtp_server)

    for _ in range(3):
        emails.deliver(notification())

    assert len(smtp_server.handler.envelopes) == 3
    assert len(set(smtp_server.handler.peers)) == 1


def test_a_session_the_server_dropped_is_replaced_and_nothing_is_sent_twice(
    start_smtp: Callable[..., SmtpServer],
) -> None:
    server = start_smtp(timeout=0.2)  # the server closes a session idle this long
    emails = channel_for(server)

    emails.deliver(notification())
    time.sleep(0.6)
    assert "accepted" in emails.deliver(notification())

    assert len(server.handler.envelopes) == 2
    assert server.handler.peers[0] != server.handler.peers[1]


def test_a_session_idle_longer_than_its_time_is_not_reused(
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(email_channel, "SMTP_IDLE_SECONDS", 0.1)
    emails = channel_for(smtp_server)

    emails.deliver(notification())
    time.sleep(0.3)
    emails.deliver(notification())

    assert smtp_server.handler.peers[0] != smtp_server.handler.peers[1]


def test_a_session_carries_a_bounded_number_of_messages(
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(email_channel, "MESSAGES_PER_SESSION", 2)
    emails = channel_for(smtp_server)

    for _ in range(3):
        emails.deliver(notification())

    first, second, third = smtp_server.handler.peers
    assert first == second != third


def test_after_a_refused_recipient_the_next_message_still_goes(smtp_server: SmtpServer) -> None:
    emails = channel_for(smtp_server)
    emails.deliver(notification())
    smtp_server.handler.rcpt_reply = "550 no such user"
    with pytest.raises(PermanentError):
        emails.deliver(notification(recipient="nobody@example.com"))
    smtp_server.handler.rcpt_reply = None

    emails.deliver(notification(recipient="grace@example.com"))

    assert [envelope.rcpt_tos for envelope in smtp_server.handler.envelopes] == [  # type: ignore[attr-defined]
        ["ada@example.com"],
        ["grace@example.com"],
    ]


def test_threads_send_over_sessions_of_their_own(smtp_server: SmtpServer) -> None:
    emails = channel_for(smtp_server)

    def send_twice() -> None:
        for _ in range(2):
            emails.deliver(notification())

    threads = [threading.Thread(target=send_twice) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(smtp_server.handler.envelopes) == 4
    assert len(set(smtp_server.handler.peers)) == 2


def test_closing_the_channel_quits_the_sessions_every_thread_kept(smtp_server: SmtpServer) -> None:
    emails = channel_for(smtp_server)
    threads = [threading.Thread(target=emails.deliver, args=(notification(),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert smtp_server.handler.quits == 0

    emails.close()

    assert smtp_server.handler.quits == 2


def test_a_thread_whose_session_was_closed_opens_a_new_one(smtp_server: SmtpServer) -> None:
    emails = channel_for(smtp_server)
    emails.deliver(notification())
    emails.close()

    assert "accepted" in emails.deliver(notification())

    first, second = smtp_server.handler.peers
    assert first != second


def test_without_an_smtp_url_each_job_is_written_once_to_the_outbox(tmp_path: Path) -> None:
    outbox = tmp_path / "var" / "outbox"
    channel = EmailChannel(ChannelConfig(outbox_dir=outbox))

    first = channel.deliver(notification(attempt=1))
    second = channel.deliver(notification(attempt=2, message="Updated.\nBody."))

    assert first == second == str(outbox / f"{JOB}.eml")
    assert [path.name for path in outbox.iterdir()] == [f"{JOB}.eml"]
    message = email.message_from_bytes(Path(first).read_bytes(), policy=email.policy.default)
    assert message["Message-ID"] == f"<{JOB}@wjp>"
    assert message["Subject"] == "Updated."
    assert message["To"] == "ada@example.com"
    assert message["From"] == "notifications@localhost"


def test_a_sender_with_a_display_name_uses_the_bare_address_in_the_envelope(smtp_server: SmtpServer) -> None:
    config = ChannelConfig(smtp_url=f"smtp://127.0.0.1:{smtp_server.port}", email_from="Acme <noreply@acme.example>")

    EmailChannel(config).deliver(notification())

    assert smtp_server.handler.envelopes[0].mail_from == "noreply@acme.example"  # type: ignore[attr-defined]
    assert received(smtp_server)["From"] == "Acme <noreply@acme.example>"
