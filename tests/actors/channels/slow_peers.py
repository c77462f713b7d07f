"""Receivers that answer slowly on purpose, on loopback: an SMTP relay that waits before each reply and an HTTP
server that trickles its response a byte at a time. Each records, server side, whether its client was still
connected when it answered."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO


def peer_closed(conn: socket.socket) -> bool:
    """Whether the client has ended the connection (it sends nothing while it waits for an answer)."""
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        # The plain socket's own peek, under TLS too: the end of the connection, not of a TLS record.
        return socket.socket.recv(conn, 1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def read_request(reader: BinaryIO) -> bool:
    """Read one HTTP/1.1 request, its head and its Content-Length body; False when the client ended the connection
    instead."""
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if not line:
        return False
    reader.read(length)
    return True


class LoopbackServer:
    """A loopback TCP server running one thread per connection until `stop`."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.stopped = threading.Event()
        #: The client port of each connection, in the order they were accepted.
        self.connections: list[int] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, peer = self._listener.accept()
            except OSError:
                return
            self.connections.append(peer[1])
            threading.Thread(target=self._run, args=(conn, peer[1]), daemon=True).start()

    def _run(self, conn: socket.socket, port: int) -> None:
        with contextlib.suppress(OSError):
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self._conns.append(conn)
            with conn:
                self.serve(conn, port)

    def serve(self, conn: socket.socket, port: int) -> None:
        raise NotImplementedError

    def pause(self, seconds: float) -> None:
        self.stopped.wait(seconds)

    def stop(self) -> None:
        self.stopped.set()
        self._listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@dataclass
class Answer:
    """One reply the relay was about to send."""

    at: float
    text: bytes
    #: The client had already closed the connection, so the reply never reached it.
    peer_closed: bool


class SlowRelay(LoopbackServer):
    """An SMTP relay that waits `delay` seconds before each reply, the greeting included; with `trickle`, it
    sends its (long) greeting one byte every `trickle` seconds."""

    def __init__(self, *, delay: float = 0.0, trickle: float = 0.0, tls: ssl.SSLContext | None = None) -> None:
        self.delay = delay
        self.trickle = trickle
        #: Every reply the relay was about to send, in order.
        self.answers: list[Answer] = []
        super().__init__(tls)

    @property
    def accepted(self) -> list[Answer]:
        """The acceptances of a message (the reply to its final dot) that reached a connected client."""
        return [a for a in self.answers if a.text.startswith(b"250 queued") and not a.peer_closed]

    def _answer(self, conn: socket.socket, text: bytes) -> None:
        self.pause(self.delay)
        closed = peer_closed(conn)
        self.answers.append(Answer(time.monotonic(), text, closed))
        if closed:
            raise ConnectionAbortedError
        conn.sendall(text)

    def serve(self, conn: socket.socket, port: int) -> None:
        if self.trickle:
            for byte in b"220 " + b"slow " * 40 + b"relay\r\n":
                self.pause(self.trickle)
                if peer_closed(conn):
                    self.answers.append(Answer(time.monotonic(), b"220 (greeting)", True))
                    return
                conn.sendall(bytes([byte]))
        else:
            self._answer(conn, b"220 slow relay ESMTP\r\n")
        lines = conn.makefile("rb")
        in_data = False
        while line := lines.readline():
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    self._answer(conn, b"250 queued\r\n")
                continue
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self._answer(conn, b"250 slow relay\r\n")
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                self._answer(conn, b"250 OK\r\n")
            elif verb == b"DATA":
                in_data = True
                self._answer(conn, b"354 go ahead\r\n")
            elif verb == b"QUIT":
                self._answer(conn, b"221 bye\r\n")
                return
            else:
                self._answer(conn, b"502 not here\r\n")


@dataclass
class Cut:
    """A response the receiver could not finish: its client closed the connection first."""

    at: float
    port: int
    bytes_sent: int


class TricklingReceiver(LoopbackServer):
    """An HTTP/1.1 server (keep-alive) that answers 200 to every request, writing the response one byte every
    `trickle` seconds (all at once when zero). It records the requests and the responses it finished (by client
    port), and those it could not finish because the client had closed the connection."""

    def __init__(self, *, trickle: float = 0.0, tls: ssl.SSLContext | None = None) -> None:
        self.trickle = trickle
        self.requests: list[int] = []
        self.finished: list[int] = []
        self.cuts: list[Cut] = []
        super().__init__(tls)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def serve(self, conn: socket.socket, port: int) -> None:
        reader = conn.makefile("rb")
        while True:
            if not read_request(reader):
                return
            self.requests.append(port)
            response = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{"sid":"SM1"}'
            if not self.trickle:
                conn.sendall(response)
            else:
                for sent, byte in enumerate(response):
                    self.pause(self.trickle)
                    if peer_closed(conn):
                        self.cuts.append(Cut(time.monotonic(), port, sent))
                        return
                    conn.sendall(bytes([byte]))
            self.finished.append(port)
