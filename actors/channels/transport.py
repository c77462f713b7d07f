"""An httpx transport whose connections honour the attempt's deadline (see `actors.channels.deadline`).

httpx opens its sockets inside httpcore, out of the channel's reach; httpcore's public network-backend interface
lets each stream watch its socket under the cutoff of the attempt using it (a kept connection under each
attempt that reuses it) and cut every operation's timeout to the time left.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Iterator

import httpcore
import httpx

from actors.channels import deadline

# httpcore's errors as httpx's, most specific first, so the channels catch httpx's as with httpx's own transport.
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


def _as_httpx(exc: Exception) -> Exception:
    for source, target in _ERRORS:
        if isinstance(exc, source):
            return target(str(exc))
    return exc


class _WatchedStream(httpcore.NetworkStream):
    """A connection's stream that is watched by the cutoff of whichever attempt reads or writes it."""

    def __init__(self, stream: httpcore.NetworkStream, watched_by: deadline.Cutoff | None = None) -> None:
        self._stream = stream
        self._watched_by = watched_by

    def watch(self) -> deadline.Cutoff | None:
        """Have the calling thread's cutoff watch this connection's socket, once per attempt; return the cutoff."""
        cutoff = deadline.current()
        if cutoff is not None and self._watched_by is not cutoff:
            self._watched_by = cutoff
            cutoff.watch(self._stream.get_extra_info("socket"))
        return cutoff

    def _left(self, timeout: float | None, expired: type[Exception]) -> float | None:
        cutoff = self.watch()
        if cutoff is None or cutoff.deadline is None:
            return timeout
        left = cutoff.left(timeout if timeout is not None else float("inf"))
        if left <= 0 or cutoff.fired:
            raise expired("the attempt's deadline has passed")
        return left

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        left = self._left(timeout, httpcore.ConnectTimeout)
        # The TLS stream runs over the same kernel socket, which stays watched.
        return _WatchedStream(self._stream.start_tls(ssl_context, server_hostname, left), self._watched_by)

    def get_extra_info(self, info: str) -> object:
        return self._stream.get_extra_info(info)


class _WatchedBackend(httpcore.SyncBackend):
    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        cutoff = deadline.current()
        if cutoff is not None and timeout is not None:
            timeout = cutoff.left(timeout)
            if timeout <= 0:
                raise httpcore.ConnectTimeout("the attempt's deadline has passed")
        stream = _WatchedStream(super().connect_tcp(host, port, timeout, local_address, socket_options))
        stream.watch()  # before the TLS handshake, which may be slow too
        return stream


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except Exception as exc:
            raise _as_httpx(exc) from exc

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class WatchedTransport(httpx.BaseTransport):
    """httpx's default transport, minus proxies, over connections that honour the attempt's deadline."""

    def __init__(self, *, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_WatchedBackend(),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = self._pool.handle_request(core_request)
        except Exception as exc:
            raise _as_httpx(exc) from exc
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


def read_limited(response: httpx.Response, limit: int, deadline: float) -> bytes:
    """Read at most `limit` bytes of a streamed body as it came over the wire, stopping early at
    `deadline`. Raw: a receiver's gzip would be inflated a whole network read at a time (a 64 KiB read of a
    gzip bomb is 64 MiB), whatever the bound. A body compressed although we asked for none is not quoted."""
    if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
        return b""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_raw():
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit or time.monotonic() >= deadline:
                break
    except httpx.HTTPError:
        pass  # The status line already decided the outcome; the body only adds detail.
    return b"".join(chunks)[:limit]
