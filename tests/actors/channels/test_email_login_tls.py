"""The email channel logging in and speaking TLS to a real SMTP server (aiosmtpd on 127.0.0.1)."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from aiosmtpd.smtp import AuthResult

from actors.channels import TransientError
from tests.actors.channels.conftest import SmtpServer
from tests.actors.channels.mail import channel_for, notification
from tests.e2e.conftest import Process, process_env

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

    channel_for(server, f"smtp://ada:p%40ss%3Aw%2Frd@127.0.0.1:{server.port}?allow_plaintext_auth=true").deliver(
        notification()
    )

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
        channel_for(server, f"smtp://ada:wrong@127.0.0.1:{server.port}?allow_plaintext_auth=true").deliver(
            notification()
        )
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
