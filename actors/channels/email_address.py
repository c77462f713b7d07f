"""What the email channel reads from its settings and recipients: the SMTP server's URL and email addresses."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import parseaddr
from urllib.parse import parse_qs, unquote, urlsplit

#: Longest address SMTP can carry in a forward path (RFC 5321 §4.5.3.1.3).
MAX_ADDRESS = 254

#: Longest local part, before the @ (RFC 5321 §4.5.3.1.1).
MAX_LOCAL_PART = 64

# Pragmatic, ASCII-only: a dot-atom local part and a host name with at least one dot (or
# "localhost"). Quoted local parts and address literals are legal but unused in practice, and
# refusing them keeps one address per recipient, with nothing a header parser could split.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}(?:\.{_LABEL})+|localhost)", re.ASCII)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class SmtpServer:
    """Where and how to submit mail, parsed from `WJP_SMTP_URL`."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    implicit_tls: bool = False
    starttls: bool = False


def parse_smtp_url(url: str) -> SmtpServer:
    """Parse `smtp://user:pass@host:port[?starttls=true]` or `smtps://user:pass@host:port`.

    A user name over plain `smtp://` needs `starttls=true`, or `allow_plaintext_auth=true` for a relay on a
    network one trusts: otherwise the password would cross the network in clear text.

    Raises:
        ValueError: the URL is malformed or would log in in clear text; the message names `WJP_SMTP_URL`.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        # Nothing of the URL is echoed: `user:pass@host` parses with `user` as its scheme.
        raise ValueError("WJP_SMTP_URL must start with smtp:// or smtps://")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"WJP_SMTP_URL has an invalid port: {exc}") from None
    if not parts.hostname:
        raise ValueError("WJP_SMTP_URL needs a host, as in smtp://mail.example.com:587")
    options = {"starttls": False, "allow_plaintext_auth": False}
    for key, values in parse_qs(parts.query, keep_blank_values=True).items():
        if key not in options:
            raise ValueError(f"WJP_SMTP_URL has an unknown option {key!r}; only {' and '.join(options)} are known")
        value = values[-1].lower()
        if value not in _TRUE | _FALSE:
            raise ValueError(f"WJP_SMTP_URL option {key} must be true or false, not {values[-1]!r}")
        options[key] = value in _TRUE
    starttls = options["starttls"]
    implicit_tls = parts.scheme == "smtps"
    if implicit_tls and starttls:
        raise ValueError("WJP_SMTP_URL: starttls applies to smtp://; smtps:// is already encrypted")
    username = unquote(parts.username) if parts.username else None
    if username and not (implicit_tls or starttls or options["allow_plaintext_auth"]):
        raise ValueError(
            "WJP_SMTP_URL would send its password in clear text over smtp://: add ?starttls=true, use smtps://, "
            "or add ?allow_plaintext_auth=true for a relay on a network you trust"
        )
    return SmtpServer(
        host=parts.hostname,
        port=port or (465 if implicit_tls else 25),
        username=username,
        password=unquote(parts.password or "") if username else None,
        implicit_tls=implicit_tls,
        starttls=starttls,
    )


def address_problem(address: str) -> str | None:
    """Say why `address` is not one plausible email address, or return None."""
    if not address:
        return "The email address is empty."
    if len(address) > MAX_ADDRESS:
        return f"The email address is longer than {MAX_ADDRESS} characters."
    if any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in address):
        return "The email address must not contain spaces, line breaks or control characters."
    if address.count("@") != 1:
        return "The email address must contain exactly one @."
    local = address.partition("@")[0]
    if not local:
        return "The email address has nothing before the @."
    if len(local) > MAX_LOCAL_PART:
        return f"The part of the email address before the @ is longer than {MAX_LOCAL_PART} characters."
    if not _ADDRESS.fullmatch(address):
        return f"{address!r} is not a valid email address (expected something like name@example.com)."
    return None


def sender_address(email_from: str) -> str:
    """Return the bare address of `WJP_EMAIL_FROM`, which may be "Display Name <address>".

    Raises:
        ValueError: the value is not a usable sender; the message names `WJP_EMAIL_FROM`.
    """
    if "\r" in email_from or "\n" in email_from:
        raise ValueError("WJP_EMAIL_FROM must not contain line breaks")
    _, address = parseaddr(email_from)
    problem = address_problem(address)
    if problem:
        raise ValueError(f"WJP_EMAIL_FROM: {problem}")
    return address
