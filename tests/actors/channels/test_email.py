"""The email channel against a real SMTP server (aiosmtpd on 127.0.0.1) and the outbox directory."""

from __future__ import annotations

import email
import email.policy
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.smtp import AuthResult

from actors.channels import ChannelConfig, Notification, PermanentError, TransientError
from actors.channels import email as email_channel
from actors.channels.email import EmailChannel
from actors.channels.email_address import parse_smtp_url
from tests.actors.channels.conftest import SmtpServer, free_port
from tests.e2e.conftest import Process, process_env

JOB = uuid.UUID("0b0e6a3c-6f55-4a8e-9a57-0d5a1f3f6c11")


def notification(**changes: object) -> Notification:
    fields: dict[str, object] = {
        "job_id": JOB,
        "recipient": "ada@example.com",
        "message": "Your order has shipped.\nIt arrives on Monday.",
    }
    fields.update(changes)
    return Notification(**fields)  # type: ignore[arg-type]


def channel_for(server: SmtpServer, url: str | None = None, **options: object) -> EmailChannel:
    # A short cap keeps a misbehaving test server from stalling the suite.
    config = ChannelConfig(
        smtp_url=url or f"smtp://127.0.0.1:{server.port}", email_from="wjp@example.org", timeout_cap=5
    )
    return EmailChannel(config, **options)  # type: ignore[arg-type]


def received(server: SmtpServer, index: int = -1) -> EmailMessage:
    content = server.handler.envelopes[index].content  # type: ignore[attr-defined]
    return email.message_from_bytes(content, policy=email.policy.default)  # type: ignore[return-value]


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


# AUTH without TLS is fine on loopback; only PLAIN is offered, so one failed login is one 535.
AUTH_OPTIONS = {"auth_required": True, "auth_require_tls": False, "auth_exclude_mechanism": ["LOGIN"]}
without_tls_warning = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def accept(login: bytes, password: bytes) -> Callable[..., AuthResult]:
    def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
        # handled=False: aiosmtpd then answers a failure with its standard 535 reply.
        return AuthResult(success=(auth_data.login, auth_data.password) == (login, password), handled=False)

    return authenticator


@without_tls_warning
def test_url_encoded_credentials_are_decoded_and_used_to_log_in(start_smtp: Callable[..., SmtpServer]) -> None:
    server = start_smtp(**AUTH_OPTIONS, authenticator=accept(b"ada", b"p@ss:w/rd"))

    channel_for(server, f"smtp://ada:p%40ss%3Aw%2Frd@127.0.0.1:{server.port}?allow_plaintext_auth=true").deliver(notification())

    assert len(server.handler.envelopes) == 1


@without_tls_warning
def test_a_kept_session_logs_in_once(start_smtp: Callable[..., SmtpServer]) -> None:
    logins: list[bytes] = []
    check = accept(b"ada", b"secret")

    def counting(server, session, envelope, mechanism, auth_data) -> AuthResult:  # type: ignore[no-untyped-def]
        logins.append(auth_data.login)
        return check(server, session, envelope, mechanism, auth_data)

    server = start_smtp(**AUTH_OPTIONS, authenticator=counting)
    emails = channel_for(server, f"smtp://ada:secret@127.0.0.1:{server.port}?allow_plaintext_auth=true")

    emails.deliver(notification())
    emails.deliver(notification())

    assert len(server.handler.envelopes) == 2
    assert logins == [b"ada"]


@without_tls_warning
def test_a_rejected_login_is_transient_so_jobs_survive_a_configuration_mistake(
    start_smtp: Callable[..., SmtpServer],
) -> None:
    server = start_smtp(**AUTH_OPTIONS, authenticator=accept(b"ada", b"right"))

    with pytest.raises(TransientError, match="535"):
        channel_for(server, f"smtp://ada:wrong@127.0.0.1:{server.port}?allow_plaintext_auth=true").deliver(notification())
    assert server.handler.envelopes == []


def recording(logins: list[tuple[bytes, bytes]]) -> Callable[..., AuthResult]:
    def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:  # type: ignore[no-untyped-def]
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=True, handled=False)

    return authenticator


@without_tls_warning
@pytest.mark.parametrize("url", ["smtp://ada:secret@127.0.0.1:{port}", "smtp://ada@127.0.0.1:{port}?starttls=false"])
def test_a_user_name_over_plain_smtp_stops_start_up_before_a_password_crosses_the_network(
    start_smtp: Callable[..., SmtpServer], url: str
) -> None:
    # A relay that offers AUTH and no STARTTLS: a client that logs in there sends its password in clear text.
    logins: list[tuple[bytes, bytes]] = []
    server = start_smtp(**AUTH_OPTIONS, authenticator=recording(logins))

    with pytest.raises(ValueError, match="WJP_SMTP_URL") as refused:
        channel_for(server, url.format(port=server.port)).deliver(notification())

    assert "secret" not in str(refused.value)
    assert logins == [] and server.handler.envelopes == []


@without_tls_warning
def test_allow_plaintext_auth_logs_in_over_plain_smtp_on_purpose(start_smtp: Callable[..., SmtpServer]) -> None:
    logins: list[tuple[bytes, bytes]] = []
    server = start_smtp(**AUTH_OPTIONS, authenticator=recording(logins))

    channel_for(server, f"smtp://ada:secret@127.0.0.1:{server.port}?allow_plaintext_auth=true").deliver(notification())

    assert logins == [(b"ada", b"secret")] and len(server.handler.envelopes) == 1


@without_tls_warning
def test_a_worker_given_a_user_name_over_plain_smtp_stops_at_start_with_one_line(
    start_smtp: Callable[..., SmtpServer], tmp_path: Path
) -> None:
    server = start_smtp(**AUTH_OPTIONS, authenticator=recording([]))
    env = process_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'wjp.sqlite3'}",
        WJP_SMTP_URL=f"smtp://ada:secret@127.0.0.1:{server.port}",
        WJP_WEBHOOK_SECRET="whsec_" + "k" * 32,
    )
    worker = Process(["worker", "--processes", "1", "--threads", "1"], env, tmp_path / "worker.log")
    try:
        assert worker.handle.wait(timeout=60) == 1
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker started:\n{worker.output()}")
    finally:
        worker.kill()
    (line,) = worker.output().strip().splitlines()
    assert "WJP_SMTP_URL" in line and "secret" not in line


@pytest.fixture
def certificate(make_certificate: Callable[[str], tuple[Path, Path]]) -> tuple[Path, Path]:
    return make_certificate("IP:127.0.0.1")


def tls_contexts(certificate: tuple[Path, Path]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = certificate
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


def test_starttls_is_used_when_the_url_asks_for_it(
    start_smtp: Callable[..., SmtpServer], certificate: tuple[Path, Path]
) -> None:
    server_context, client_context = tls_contexts(certificate)
    server = start_smtp(tls_context=server_context, require_starttls=True)
    url = f"smtp://127.0.0.1:{server.port}?starttls=true"

    channel_for(server, url, ssl_context=client_context).deliver(notification())

    assert len(server.handler.envelopes) == 1


def test_a_server_requiring_starttls_that_the_url_does_not_ask_for_is_a_transient_set_up_error(
    start_smtp: Callable[..., SmtpServer], certificate: tuple[Path, Path]
) -> None:
    server_context, _ = tls_contexts(certificate)
    server = start_smtp(tls_context=server_context, require_starttls=True)

    with pytest.raises(TransientError, match="530"):
        channel_for(server).deliver(notification())
    assert server.handler.envelopes == []


def test_smtps_speaks_tls_from_the_first_byte(
    start_smtp: Callable[..., SmtpServer], certificate: tuple[Path, Path]
) -> None:
    server_context, client_context = tls_contexts(certificate)
    server = start_smtp(ssl_context=server_context)

    channel_for(server, f"smtps://127.0.0.1:{server.port}", ssl_context=client_context).deliver(notification())

    assert len(server.handler.envelopes) == 1


def test_an_untrusted_certificate_is_a_transient_error(
    start_smtp: Callable[..., SmtpServer], certificate: tuple[Path, Path]
) -> None:
    server_context, _ = tls_contexts(certificate)
    server = start_smtp(ssl_context=server_context)

    with pytest.raises(TransientError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        channel_for(server, f"smtps://127.0.0.1:{server.port}").deliver(notification())


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


@pytest.mark.parametrize(
    "address",
    ["ada@example.com", "first.last+tag@mail.example.co.uk", "root@localhost", "o'brien@example.ie"],
)
def test_plausible_addresses_are_accepted(address: str) -> None:
    assert EmailChannel(ChannelConfig()).check_recipient(address) is None


@pytest.mark.parametrize(
    "address",
    [
        "",
        "ada",
        "ada@@example.com",
        "ada@example",
        "@example.com",
        "ada @example.com",
        "ada@example.com\n",
        "a@b@example.com",
        "Ada <ada@example.com>",
        "ada@-example.com",
        "ada..x@example.com",
        "a" * 250 + "@example.com",
        "ada@example.com, eve@example.com",
    ],
)
def test_implausible_addresses_are_refused_with_a_sentence(address: str) -> None:
    problem = EmailChannel(ChannelConfig()).check_recipient(address)

    assert problem is not None
    assert problem.endswith(".")


def test_smtp_urls_default_to_port_25_for_smtp_and_465_for_smtps() -> None:
    assert parse_smtp_url("smtp://mail.example.com").port == 25
    assert parse_smtp_url("smtps://mail.example.com").port == 465
    assert parse_smtp_url("smtp://mail.example.com:587?starttls=true").starttls is True
    assert parse_smtp_url("smtp://mail.example.com").username is None


@pytest.mark.parametrize(
    "url",
    [
        "http://mail.example.com",
        "smtp://",
        "smtp://mail.example.com:99999",
        "smtps://h?starttls=true",
        "smtp://h?tls=1",
        "smtp://h?allow_plaintext_auth=maybe",
    ],
)
def test_a_malformed_smtp_url_is_refused_naming_the_variable(url: str) -> None:
    with pytest.raises(ValueError, match="WJP_SMTP_URL"):
        EmailChannel(ChannelConfig(smtp_url=url))


def test_a_sender_with_a_display_name_uses_the_bare_address_in_the_envelope(smtp_server: SmtpServer) -> None:
    config = ChannelConfig(smtp_url=f"smtp://127.0.0.1:{smtp_server.port}", email_from="Acme <noreply@acme.example>")

    EmailChannel(config).deliver(notification())

    assert smtp_server.handler.envelopes[0].mail_from == "noreply@acme.example"  # type: ignore[attr-defined]
    assert received(smtp_server)["From"] == "Acme <noreply@acme.example>"


def test_an_unusable_sender_stops_start_up_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="WJP_EMAIL_FROM"):
        EmailChannel(ChannelConfig(email_from="not an address"))
