"""A lean HTTP/1.1 client for the webhook channel (webhooks and status callbacks): `http.client` over connections
pinned to the address the SSRF guard checked, under the attempt's deadline (`actors.channels.deadline`).

httpx, httpcore and h11 cost a POST several times the CPU of `http.client` (bench/README.md); what they gave the
channel is kept here: the connection goes to the checked address while Host, SNI and the certificate check use the
URL's host name; no proxy, no redirect, no cookie; a response read only up to a bound; every socket operation given
the time left and the socket cut at the deadline; one kept connection per endpoint in each thread, never shared.
"""

from __future__ import annotations

import http.client
import io
import select
import socket
import ssl
import time
from typing import NamedTuple

from actors.channels import deadline

#: Informational (1xx) responses read before the answer at most; a receiver sending more is not answering.
MAX_INFORMATIONAL = 8
#: `http.client`'s bounds on a head: the longest line, and the most header lines.
MAX_LINE = 65536
MAX_HEADERS = 100


class Endpoint(NamedTuple):
    """Where a connection goes: the URL's scheme, host name and port, and the checked address it is pinned to."""

    scheme: str
    host: str
    port: int
    address: str


class ConnectFailed(OSError):
    """The connection (or its TLS handshake) could not be made: nothing was sent, another address may answer."""


class PinnedConnection:
    """One HTTP/1.1 connection to one endpoint, made to its checked address only (so reusing it keeps the pinning
    and the certificate check a new one gets). One thread uses it at a time."""

    def __init__(self, endpoint: Endpoint, ssl_context: ssl.SSLContext | None) -> None:
        self.endpoint = endpoint
        self._ssl_context = ssl_context if endpoint.scheme == "https" else None
        self._sock: socket.socket | None = None
        self._watched_by: deadline.Cutoff | None = None
        self._own: socket.socket | None = None
        #: Watches the kept socket between requests, registered once per connection.
        self._idle = select.poll()
        #: Monotonic instant it was last used, for the keep-alive expiry.
        self.used_at = time.monotonic()

    def post(self, target: str, headers: dict[str, str], body: bytes, timeout: float) -> http.client.HTTPResponse:
        """POST `body` in one write (head and body: one packet for a small one); the response with its head read.
        Every socket operation waits at most `timeout` (the channel's, cut to the attempt's deadline), and the
        socket is watched by the calling thread's attempt. `http.client` parses the response (with its bounds on
        line length and header count)."""
        self.used_at = time.monotonic()
        request = _request(target, headers, body)
        if self._sock is not None and self._idle.poll(0):
            # An idle HTTP/1.1 connection has nothing to read: readable means the receiver closed it (or sent junk).
            self.close()
        if self._sock is None:
            self._sock = self._connect(timeout)
            self._idle.register(self._sock, select.POLLIN)
        else:
            self._sock.settimeout(timeout)
            cutoff = deadline.current()
            if cutoff is not self._watched_by:
                self._watched_by = cutoff
                if cutoff is not None:
                    cutoff.watch_own(self._own)  # type: ignore[arg-type]
        self._sock.sendall(request)
        source = _Source(self._sock)
        response = _Response(source, method="POST")  # type: ignore[arg-type]
        response.begin()
        # `http.client` skips a 100 Continue only; other informational responses (103 Early Hints) come before the
        # answer on the same connection, as h11 reads them. A 101 is final: nothing asked to switch protocols.
        for _ in range(MAX_INFORMATIONAL):
            if not 100 <= response.status < 200 or response.status == 101:
                break
            response.fp = None  # its reader, and what it buffered, go on to the response that follows
            response = _Response(source, method="POST")  # type: ignore[arg-type]
            response.begin()
        else:
            response.close()
            raise http.client.HTTPException(f"{MAX_INFORMATIONAL} informational responses and no answer")
        if source.reader is not None and source.reader.ended:
            # `http.client` takes the end of the stream for the end of the head: a head cut short is no answer.
            response.close()
            raise http.client.IncompleteRead(b"", None)
        return response

    def close(self) -> None:
        """Close the socket (a response still open keeps its own reference until it is closed)."""
        if self._sock is not None:
            self._idle = select.poll()
            self._sock.close()
            self._sock = None
        if self._own is not None:
            deadline.release(self._own)
            self._own = None

    def _connect(self, timeout: float) -> socket.socket:
        """Connect to the pinned address (never a lookup) and, for https, verify the certificate for the host
        name, sent as SNI; watched by the attempt's cutoff before the handshake, which may be slow too."""
        try:
            sock = socket.create_connection((self.endpoint.address, self.endpoint.port), timeout)
        except TimeoutError:
            raise
        except OSError as exc:
            raise ConnectFailed(str(exc)) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Its descriptor duplicated once, for each of its attempts' cutoffs to shut down at their deadline.
        self._own = deadline.own(sock)
        self._watched_by = deadline.current()
        if self._watched_by is not None:
            self._watched_by.watch_own(self._own)
        if self._ssl_context is None:
            return sock
        try:
            return self._ssl_context.wrap_socket(sock, server_hostname=self.endpoint.host)
        except TimeoutError:
            sock.close()
            self.close()
            raise
        except OSError as exc:
            sock.close()
            self.close()
            raise ConnectFailed(str(exc)) from exc


class _Response(http.client.HTTPResponse):
    """`http.client`'s response, its head read without the email parser that `http.client.parse_headers` runs, which
    cost a callback's POST more CPU than everything else the client does (bench/README.md, 2026-12-04 13:40). The
    body is read by `http.client` as before, framed by what this reads exactly as `HTTPResponse.begin` frames it."""

    def begin(self) -> None:
        if self.headers is not None:
            return
        version, status, reason = self._status_line()
        while status == http.client.CONTINUE:  # skipped with its head, as `http.client` does
            _header_lines(self.fp)
            version, status, reason = self._status_line()
        self.code = self.status = status
        self.reason = reason
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = http.client.HTTPMessage()
        for name, value in _header_lines(self.fp):
            self.headers[name] = value
        self.chunked = (self.headers.get("transfer-encoding") or "").lower() == "chunked"
        self.chunk_left = None
        self.will_close = self._closes()
        self.length = None if self.chunked else _length(self.headers.get("content-length"))
        if status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED) or 100 <= status < 200:
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True

    def _status_line(self) -> tuple[str, int, str]:
        line = self.fp.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise http.client.LineTooLong("status line")
        if not line:
            raise http.client.RemoteDisconnected("Remote end closed connection without response")
        text = line.decode("iso-8859-1")
        parts = text.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise http.client.BadStatusLine(text)
        try:
            status = int(parts[1])
        except ValueError:
            raise http.client.BadStatusLine(text) from None
        if not 100 <= status <= 999:
            raise http.client.BadStatusLine(text)
        return parts[0], status, parts[2].strip() if len(parts) > 2 else ""

    def _closes(self) -> bool:
        """As `HTTPResponse._check_close`: HTTP/1.1 stays open unless told to close; HTTP/1.0 closes unless kept."""
        connection = (self.headers.get("connection") or "").lower()
        if self.version == 11:
            return "close" in connection
        kept = self.headers.get("keep-alive") or "keep-alive" in connection
        return not (kept or "keep-alive" in (self.headers.get("proxy-connection") or "").lower())


def _length(value: str | None) -> int | None:
    """A Content-Length as `http.client` reads it: None when absent, unreadable or negative."""
    try:
        length = int(value or "")
    except ValueError:
        return None
    return length if length >= 0 else None


def _header_lines(fp: io.BufferedReader) -> list[tuple[str, str]]:
    """The header lines of a head up to its blank line, `(name, value)`, a folded line joined to the one before; a
    line that is no header is skipped. Bounded as `http.client` bounds them."""
    headers: list[tuple[str, str]] = []
    for _ in range(MAX_HEADERS + 1):
        line = fp.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            return headers
        text = line.decode("iso-8859-1")
        if text[0] in " \t":
            if headers:
                headers[-1] = (headers[-1][0], f"{headers[-1][1]} {text.strip()}".strip())
            continue
        name, colon, value = text.partition(":")
        if colon:  # the value as `http.client` gives it: spaces after the colon dropped, those at its end kept
            headers.append((name, value.lstrip(" \t").rstrip("\r\n")))
    raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")


class _HeadReader(io.BufferedReader):
    """The response's reader, which notes whether a line read ended at the end of the stream (no line break)."""

    ended = False

    def readline(self, size: int | None = -1, /) -> bytes:
        line = super().readline(-1 if size is None else size)
        if not line.endswith(b"\n"):
            self.ended = True
        return line


class _Source:
    """What `http.client.HTTPResponse` reads from: the socket, through a `_HeadReader`."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.reader: _HeadReader | None = None

    def makefile(self, mode: str) -> _HeadReader:
        # As `socket.makefile` does: the socket stays open while the reader is (its count of readers). One reader
        # for all the responses to a request, so that none loses what another's reads buffered.
        if self.reader is None:
            self.reader = _HeadReader(self._sock.makefile("rb", buffering=0))  # type: ignore[arg-type]
        return self.reader


def reusable(response: http.client.HTTPResponse) -> bool:
    """Whether the response's connection may carry the next request: its body was read to the end and the
    receiver did not ask to close (a body left unread would be taken for the next response)."""
    return response.isclosed() and not response.will_close


def read_limited(response: http.client.HTTPResponse, limit: int, ends: float) -> bytes:
    """Read at most `limit` bytes of the body as it came over the wire, stopping early at `ends` (monotonic). Raw:
    a body compressed although we asked for none is not read (a gzip bomb is never inflated)."""
    if (response.getheader("content-encoding") or "identity").strip().lower() != "identity":
        return b""
    chunks: list[bytes] = []
    size = 0
    try:
        while size < limit and time.monotonic() < ends:
            chunk = response.read1(limit - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if response.length == 0:
            response.close()  # read to its end (`read1` leaves that to the caller), so the connection is reusable
    except (OSError, http.client.HTTPException):
        pass  # The status line already decided the outcome; the body only adds detail.
    return b"".join(chunks)


def _request(target: str, headers: dict[str, str], body: bytes) -> bytes:
    for part in (target, *headers, *headers.values()):
        if "\r" in part or "\n" in part:
            raise ValueError(f"a line break in {part!r}")  # never sent: it would split the request
    lines = [f"POST {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items())]
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    return "\r\n".join(lines).encode("ascii") + body
