"""A real local HTTP server standing in for a webhook receiver: it answers from a script and records
every request it gets (time, headers, body), so tests can count deliveries and check their spacing."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fresh_port import forget_earlier_flow_state


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to wait before answering (longer than the client's timeout = a hanging receiver).
    delay: float = 0.0


@dataclass(frozen=True)
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes
    #: The wall clock's time of arrival, for comparing with times Redis or the database stamped.
    wall: float = 0.0

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class WebhookSink:
    """Answers the n-th request with `script[n]` (the last entry repeats; 200 when empty)."""

    def __init__(self, script: list[Reply] | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.script = list(script or [])
        self.received: list[Received] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with sink._lock:
                    n = len(sink.received)
                    sink.received.append(Received(time.monotonic(), self.path, dict(self.headers), body, time.time()))
                    reply = sink.script[min(n, len(sink.script) - 1)] if sink.script else Reply()
                time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up waiting, as intended for a hanging reply

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server_class = _IPv6HTTPServer if ":" in host else ThreadingHTTPServer
        self.server = server_class((host, port), Handler)
        self.server.daemon_threads = True
        self.host = host

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.server.server_address[1]}/hook"

    def count(self, job_id: object | None = None) -> int:
        with self._lock:
            if job_id is None:
                return len(self.received)
            return sum(1 for r in self.received if r.headers.get("webhook-id") == str(job_id))

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)


class _IPv6HTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6


@contextmanager
def webhook_sink(script: list[Reply] | None = None, host: str = "127.0.0.1", port: int = 0) -> Iterator[WebhookSink]:
    """A sink on `host` (127.0.0.1, or ::1 for IPv6 loopback) at `port` (0: a free one)."""
    sink = WebhookSink(script, host, port)
    forget_earlier_flow_state(host, int(sink.server.server_address[1]))
    thread = threading.Thread(target=sink.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.server.shutdown()
        sink.server.server_close()
