"""A TCP proxy in front of PostgreSQL that loses the answer to a committed statement, as a network failure does.

Once armed, it holds back what the server says until the end of the next statement's reply (CommandComplete
then ReadyForQuery: the server sends ReadyForQuery after committing a statement run outside a transaction)
and then drops both connections instead of forwarding it. The statement has committed on the server; the
client only sees its connection die."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from sqlalchemy.engine import make_url

from ledger.database import normalize_url


class LosingProxy:
    def __init__(self, database_url: str) -> None:
        url = make_url(normalize_url(database_url))
        self.upstream = (url.host or "127.0.0.1", url.port or 5432)
        self.listener = socket.create_server(("127.0.0.1", 0))
        # The proxy reads the protocol, so the session must not be encrypted.
        self.url = (
            url.set(host="127.0.0.1", port=self.listener.getsockname()[1])
            .update_query_dict({"sslmode": "disable", "gssencmode": "disable"})
            .render_as_string(hide_password=False)
        )
        self.lost = threading.Event()
        self._armed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self) -> None:
        """Lose the answer of the next statement that completes on any connection."""
        self.lost.clear()
        self._armed.set()

    def __enter__(self) -> LosingProxy:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            threading.Thread(target=self._forward, args=(client, server), daemon=True).start()
            threading.Thread(target=self._answer, args=(server, client), daemon=True).start()

    def _forward(self, source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        _close(source, target)

    def _answer(self, server: socket.socket, client: socket.socket) -> None:
        """Forward the server's messages (a type byte, then a length that counts itself), holding them back while
        armed until a statement's reply is complete."""
        pending, held, completed = b"", b"", False
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                pending += data
                while len(pending) >= 5:
                    size = struct.unpack("!I", pending[1:5])[0] + 1
                    if len(pending) < size:
                        break
                    message, pending = pending[:size], pending[size:]
                    if not self._armed.is_set():
                        client.sendall(message)
                        continue
                    held += message
                    completed |= message[:1] == b"C"
                    if message[:1] != b"Z":
                        continue
                    if completed:
                        self._armed.clear()
                        self.lost.set()
                        _close(server, client)
                        return
                    client.sendall(held)
                    held = b""
        _close(server, client)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
