"""The email channel: plain-text mail over SMTP, or one `.eml` file per job when no server is set."""

from __future__ import annotations

import os
import smtplib
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

from actors.channels import deadline, register
from actors.channels.base import (
    Channel,
    ChannelConfig,
    DeliveryError,
    Notification,
    PermanentError,
    TransientError,
    TransientSetupError,
    system_tls_context,
)
from actors.channels.email_address import SmtpServer, address_problem, parse_smtp_url, sender_address
from actors.flow.keys import destination_key

#: Longest one SMTP socket operation may wait, in seconds, before `ChannelConfig.timeout_cap` and the time left
#: before the attempt's deadline cut it.
SMTP_TIMEOUT = 30.0

#: How long a worker thread keeps its SMTP session open after a message, for the next one.
SMTP_IDLE_SECONDS = 10.0

#: Messages sent over one session before it is closed and a new one opened: relays may cap them per session.
MESSAGES_PER_SESSION = 100

#: Longest subject taken from the first line of the message.
MAX_SUBJECT = 255


def subject_for(notification: Notification) -> str:
    """Return the Subject: the notification's own, else the first line of its message."""
    if notification.subject is not None and notification.subject.strip():
        # A line break in a header value would start a new header; fold it into a space instead.
        return " ".join(notification.subject.split())
    lines = notification.message.strip().splitlines()
    first = " ".join(lines[0].split()) if lines else ""
    return first[:MAX_SUBJECT]


def message_id(job_id: uuid.UUID) -> str:
    """Return the Message-ID of every attempt of one job, so receivers can drop duplicates."""
    return f"<{job_id}@wjp>"


@register
class EmailChannel(Channel):
    """Sends plain-text mail over SMTP, or writes `{job_id}.eml` into the outbox directory."""

    name = "email"

    def __init__(
        self,
        config: ChannelConfig,
        *,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(config)
        #: The envelope sender; `config.email_from` may also carry a display name, "Acme <a@b.c>".
        self.sender = sender_address(config.email_from)
        self.server = parse_smtp_url(config.smtp_url) if config.smtp_url else None
        self.timeout = min(SMTP_TIMEOUT, config.timeout_cap)
        self._ssl_context = ssl_context  # None: the system's (`system_tls_context`), when first needed
        self._clock = clock
        self._sessions = _ThreadSessions()
        # The sessions kept between messages, whichever thread keeps them: the worker says goodbye to each as it
        # stops, where the relay would otherwise log a lost connection for every one.
        self._idle: set[_Session] = set()
        self._idle_lock = threading.Lock()

    def check_recipient(self, recipient: str) -> str | None:
        return address_problem(recipient)

    def destination(self, recipient: str) -> str:
        """`email:<relay host>:<port>`, the one relay every message goes through; `email:outbox` without one."""
        if self.server is None:
            return destination_key(self.name, "outbox")
        return destination_key(self.name, self.server.host, self.server.port)

    def deliver(self, notification: Notification) -> str:
        problem = self.check_recipient(notification.recipient)
        if problem:
            raise PermanentError(problem)
        message = self.compose(notification)
        if self.server is None:
            return self._write_outbox(notification.job_id, message)
        with deadline.Cutoff(notification.deadline) as cutoff:
            return self._submit(self.server, message, notification.recipient, cutoff)

    def compose(self, notification: Notification) -> EmailMessage:
        """Build the message exactly as it is sent or written to the outbox."""
        message = EmailMessage()
        message["From"] = self.config.email_from
        message["To"] = notification.recipient
        message["Subject"] = subject_for(notification)
        message["Date"] = formatdate(self._clock(), usegmt=True)
        message["Message-ID"] = message_id(notification.job_id)
        message.set_content(notification.message)
        return message

    def _write_outbox(self, job_id: uuid.UUID, message: EmailMessage) -> str:
        directory = Path(self.config.outbox_dir)
        target = directory / f"{job_id}.eml"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # Write beside the target and rename: readers never see half a file, and a retry of
            # the same job replaces the earlier file instead of adding a second one.
            fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{job_id}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(message.as_bytes())
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise TransientError(f"could not write {target}: {exc}") from exc
        return str(target)

    def _submit(self, server: SmtpServer, message: EmailMessage, recipient: str, cutoff: deadline.Cutoff) -> str:
        session = self._kept_session(cutoff)
        try:
            if session is None:
                session = _Session(self._connect(server, cutoff))
            session.smtp.send_message(message, from_addr=self.sender, to_addrs=[recipient])
        except (smtplib.SMTPException, OSError) as exc:
            cut = cutoff.expired  # before the QUIT below, which may itself meet the deadline
            if session is not None:
                _close_quietly(session.smtp)
            if cut:
                raise TransientError(cutoff.reason(f"SMTP server {server.host}:{server.port}")) from exc
            raise classify_smtp_error(exc) from exc
        session.sent += 1
        if session.sent >= MESSAGES_PER_SESSION or cutoff.fired:
            _close_quietly(session.smtp)
        else:
            session.idle_since = time.monotonic()
            self._sessions.kept = session
            with self._idle_lock:
                self._idle.add(session)
        return f"accepted by {server.host}:{server.port} as {message['Message-ID']}"

    def _kept_session(self, cutoff: deadline.Cutoff) -> _Session | None:
        """This thread's session from its previous message, if it is young enough and still answers.

        A reset the server answers proves the session before the message goes, so one the server has
        dropped meanwhile is replaced without anything being sent twice. From here on, the session
        is this attempt's: its socket is cut at the attempt's deadline.
        """
        session, self._sessions.kept = self._sessions.kept, None
        if session is None:
            return None
        with self._idle_lock:
            if session not in self._idle:  # closed by `close` meanwhile
                return None
            self._idle.discard(session)
        timeout = cutoff.left(self.timeout)
        if timeout <= 0:
            session.smtp.close()
            return None
        session.smtp.sock.settimeout(timeout)
        cutoff.watch(session.smtp.sock)
        if time.monotonic() - session.idle_since > SMTP_IDLE_SECONDS:
            _close_quietly(session.smtp)
            return None
        try:
            code, _ = session.smtp.rset()
        except (smtplib.SMTPException, OSError):
            session.smtp.close()
            return None
        if code != 250:
            _close_quietly(session.smtp)
            return None
        return session

    def close(self) -> None:
        """QUIT every kept session."""
        with self._idle_lock:
            sessions, self._idle = self._idle, set()
        for session in sessions:
            _close_quietly(session.smtp)

    def _connect(self, server: SmtpServer, cutoff: deadline.Cutoff) -> smtplib.SMTP:
        timeout = cutoff.left(self.timeout)
        if timeout <= 0:
            raise TimeoutError("no time left before the attempt's deadline")
        context = self._ssl_context or system_tls_context()
        if server.implicit_tls:
            smtp: smtplib.SMTP = _WatchedSMTPSSL(server.host, server.port, timeout=timeout, context=context)
        else:
            smtp = _WatchedSMTP(server.host, server.port, timeout=timeout)
        try:
            if server.starttls:
                smtp.starttls(context=context)
            if server.username:
                smtp.login(server.username, server.password or "")
        except BaseException:
            _close_quietly(smtp)
            raise
        return smtp


class _WatchedSMTP(smtplib.SMTP):
    """An SMTP client whose socket the attempt's cutoff watches from its creation, before the server's greeting.

    `_get_socket` is smtplib's own hook for making the socket (SMTP_SSL and LMTP override it too); the constructor
    connects and reads the greeting in one call, so no public step lies between the two.
    """

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = super()._get_socket(host, port, timeout)
        deadline.watch(sock)
        return sock


class _WatchedSMTPSSL(smtplib.SMTP_SSL, _WatchedSMTP):
    """SMTP over implicit TLS whose plain socket is watched before the TLS handshake (SMTP_SSL wraps it after)."""


@dataclass(eq=False)  # one per connection, kept in a set by identity
class _Session:
    """An open SMTP session and what it has carried."""

    smtp: smtplib.SMTP
    sent: int = 0
    idle_since: float = 0.0


class _ThreadSessions(threading.local):
    """Each worker thread's session kept between messages; one thread sends one message at a time."""

    def __init__(self) -> None:
        self.kept: _Session | None = None


def _close_quietly(smtp: smtplib.SMTP) -> None:
    # The server has already accepted the message (or we are raising anyway): a failing QUIT
    # must not turn a delivered message into an error that would be retried and duplicated.
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def classify_smtp_error(exc: Exception) -> DeliveryError:
    """Map an smtplib or socket error to a transient or permanent delivery error."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = list(exc.recipients.values())
        text = "; ".join(f"{code} {_text(reply)}" for code, reply in replies)
        if replies and all(500 <= code < 600 for code, _ in replies):
            return PermanentError(f"SMTP server refused the recipient: {text}")
        throttled = any(_throttling(code, _text(reply)) for code, reply in replies)
        return TransientError(f"SMTP server deferred the recipient: {text}", throttled=throttled)
    if isinstance(
        exc,
        smtplib.SMTPAuthenticationError | smtplib.SMTPSenderRefused | smtplib.SMTPConnectError | smtplib.SMTPHeloError,
    ):
        # Failures of our own set-up (credentials, sender address, the server refusing us), not
        # of this message: an operator can fix them, so the job must not be used up meanwhile.
        reply = _text(exc.smtp_error)
        return TransientSetupError(
            f"SMTP set-up failed ({type(exc).__name__}): {exc.smtp_code} {reply}",
            throttled=_throttling(exc.smtp_code, reply),
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        text = f"SMTP {exc.smtp_code} {_text(exc.smtp_error)}"
        if 500 <= exc.smtp_code < 600:
            return PermanentError(text)
        return TransientError(text, throttled=_throttling(exc.smtp_code, _text(exc.smtp_error)))
    if isinstance(exc, TimeoutError):
        return TransientError(f"SMTP server timed out: {exc}")
    return TransientError(f"SMTP failed ({type(exc).__name__}): {exc}")


def _throttling(code: int, reply: str) -> bool:
    """A relay asking us to slow down: 421 (service busy, closing), or 450/451 whose text says rate or too many."""
    if code == 421:
        return True
    lowered = reply.lower()
    return code in (450, 451) and ("rate" in lowered or "too many" in lowered)


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
