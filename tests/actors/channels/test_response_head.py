"""The webhook channel reads a response's head itself (`pinned_http._Response`, without `http.client`'s email parser):
it must frame every response as `http.client.HTTPResponse` does (status, version, length, chunking, whether the
connection closes) and find the same headers, or a kept connection would carry the end of one response into the
next. Both read the same bytes here, and their readings are compared."""

from __future__ import annotations

import http.client
import io

import pytest

from actors.channels.pinned_http import MAX_HEADERS, _Response

HEADS = {
    "204": b"HTTP/1.1 204 No Content\r\n\r\n",
    "200 with a length": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nContent-Length: 99\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "no length": b"HTTP/1.1 500 Internal Server Error\r\nRetry-After: 7\r\n\r\nbroken",
    "asked to close": b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.0": b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.0 kept alive": b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.0 Keep-Alive header": b"HTTP/1.0 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.0 proxy-connection": b"HTTP/1.0 200 OK\r\nProxy-Connection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok",
    "100 Continue first": b"HTTP/1.1 100 Continue\r\nX-A: 1\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    "103 Early Hints": b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
    "negative length": b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\nabc",
    "unreadable length": b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\nabc",
    "repeated header": b"HTTP/1.1 429 Too Many\r\nRetry-After: 1\r\nRetry-After: 9\r\nContent-Length: 0\r\n\r\n",
    "bare line feeds": b"HTTP/1.1 302 Found\nLocation: https://example.com/x\nContent-Length: 0\n\n",
    "no reason": b"HTTP/1.1 204\r\n\r\n",
    "spaces in values": b"HTTP/1.1 200 OK\r\nContent-Length:   2  \r\nContent-Encoding:  gzip \r\n\r\nok",
    "head cut short": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
}
NAMES = ("content-length", "transfer-encoding", "connection", "retry-after", "location", "content-encoding", "link")
BAD_HEADS = {
    "not HTTP": b"SMTP 220 hello\r\n\r\n",
    "no status": b"HTTP/1.1\r\n\r\n",
    "status not a number": b"HTTP/1.1 2xx OK\r\n\r\n",
    "status out of range": b"HTTP/1.1 1000 Big\r\n\r\n",
    "unknown version": b"HTTP/2 200 OK\r\n\r\n",
    "nothing": b"",
    "a line too long": b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
    "too many headers": b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n",
}


class Source:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self.data))  # type: ignore[arg-type]


def reading(kind: type[http.client.HTTPResponse], data: bytes) -> tuple:
    response = kind(Source(data), method="POST")  # type: ignore[arg-type]
    response.begin()
    headers = [response.getheader(name) for name in NAMES]
    head = (response.status, response.reason, response.version, response.chunked, response.length,
            response.will_close, headers, response.msg.get("retry-after"))  # fmt: skip
    try:
        return head, response.read()
    except http.client.IncompleteRead as exc:
        return head, type(exc)


@pytest.mark.parametrize("data", HEADS.values(), ids=HEADS.keys())
def test_a_head_is_read_as_http_client_reads_it(data: bytes) -> None:
    assert reading(_Response, data) == reading(http.client.HTTPResponse, data)


@pytest.mark.parametrize("data", BAD_HEADS.values(), ids=BAD_HEADS.keys())
def test_a_head_http_client_refuses_is_refused_the_same_way(data: bytes) -> None:
    with pytest.raises(http.client.HTTPException) as expected:
        reading(http.client.HTTPResponse, data)
    with pytest.raises(type(expected.value)):
        reading(_Response, data)


def test_a_folded_header_line_is_joined_and_a_line_that_is_no_header_skipped() -> None:
    data = b"HTTP/1.1 503 Busy\r\nRetry-After:\r\n 30\r\nnonsense\r\nContent-Length: 0\r\n\r\n"
    head, _ = reading(_Response, data)
    assert (head[4], head[6][3]) == (0, "30")
