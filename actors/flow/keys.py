"""Destination keys: how a channel names the party it talks to, and how an operator's spelling of one is read.

A key is a channel's name alone (`log`) or `<channel>:<host>[:<port>]` (`webhook:example.com:443`,
`email:outbox`, `webhook:[2001:db8::1]:443`). Hosts are lower-cased, in their IDNA ASCII form, an IPv6 literal in
brackets, so that one party has one key however its URL was spelled.
"""

from __future__ import annotations

import ipaddress
import re

import idna

#: Longest key: the width of `jobs.destination` and `destinations.key` in the ledger.
MAX_KEY_LENGTH = 300

_CHANNEL = re.compile(r"[a-z][a-z0-9_-]{0,31}", re.ASCII)
# Letters, digits, '-', '_' (some real host names carry one) and dots; no empty label.
_HOST = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*\.?", re.ASCII)


class MalformedKey(ValueError):
    """A text that is not a destination key; the message says why."""


def host_part(host: str) -> str:
    """The host as keys spell it: lower-cased, IDNA ASCII, an IPv6 literal compressed and in brackets.

    Raises:
        MalformedKey: the host is empty, not IDNA-encodable or not a host name.
    """
    bare = host
    bracketed = bare.startswith("[") and bare.endswith("]")
    if bracketed:
        bare = bare[1:-1]
    if bracketed or ":" in bare:
        try:
            return f"[{ipaddress.IPv6Address(bare).compressed}]"
        except ValueError:
            raise MalformedKey(f"{host!r} is not an IPv6 address") from None
    try:
        # The `idna` package (IDNA 2008), as httpx encodes the hosts it connects to.
        ascii_host = bare.lower() if bare.isascii() else idna.encode(bare.lower()).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise MalformedKey(f"{host!r} is not a host name (IDNA)") from None
    if not _HOST.fullmatch(ascii_host) or len(ascii_host) > 253:
        raise MalformedKey(f"{host!r} is not a host name")
    return ascii_host


def destination_key(channel: str, host: str | None = None, port: int | None = None) -> str:
    """The key of `channel` alone, of a host it talks to, or of a host and port."""
    if host is None:
        return channel
    key = f"{channel}:{host_part(host)}"
    return key if port is None else f"{key}:{port}"


def parse_key(text: str) -> str:
    """Read an operator's key and return its canonical spelling (lower-cased host, IDNA, IPv6 compressed).

    Raises:
        MalformedKey: the text is not `<channel>` or `<channel>:<host>[:<port>]`.
    """
    if not text or len(text) > MAX_KEY_LENGTH:
        raise MalformedKey(f"a destination key has 1 to {MAX_KEY_LENGTH} characters")
    channel, _, rest = text.partition(":")
    if not _CHANNEL.fullmatch(channel):
        raise MalformedKey(f"{channel!r} is not a channel name")
    if not rest:
        if text.endswith(":"):
            raise MalformedKey("a host must follow the ':'")
        return channel
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise MalformedKey("an IPv6 address needs its closing ']'")
        host, after = rest[: end + 1], rest[end + 1 :]
        if after and not after.startswith(":"):
            raise MalformedKey("only ':<port>' may follow the host")
        port_text = after[1:] if after else None
    else:
        host, colon, port_text_or_empty = rest.partition(":")
        port_text = port_text_or_empty if colon else None
    port = None
    if port_text is not None:
        if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise MalformedKey(f"{port_text!r} is not a port (1 to 65535)")
        port = int(port_text)
    return destination_key(channel, host, port)
