"""A real local webhook receiver that holds each request a while before answering 200, and counts, server side,
how many requests it holds at once: the measure of a destination's concurrency as the receiver lives it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fresh_port import forget_earlier_flow_state


@dataclass(frozen=True)
class Held:
    #: time.monotonic() when the request arrived.
    at: float
    #: The job's id (the Standard Webhooks `webhook-id` header).
    job: str
    #: Requests held at that moment, this one included.
    in_flight: int


class HoldingReceiver:
    """Holds the n-th request `holds[n]` seconds (the last entry repeats), then answers 200. A hold longer than the
    client's timeout black-holes that request; every hold ends at `close`."""

    def __init__(self, holds: list[float]) -> None:
        self.holds = holds
        self.received: list[Held] = []
        self.in_flight = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    hold = receiver.holds[min(len(receiver.received), len(receiver.holds) - 1)]
                    receiver.in_flight += 1
                    receiver.received.append(
                        Held(time.monotonic(), self.headers.get("webhook-id", ""), receiver.in_flight)
                    )
                try:
                    receiver._closed.wait(hold)
                finally:
                    # Counted out before the answer leaves: the client cannot start its next request before that.
                    with receiver._lock:
                        receiver.in_flight -= 1
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        forget_earlier_flow_state("127.0.0.1", self.port)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def destination(self) -> str:
        return f"webhook:127.0.0.1:{self.port}"

    def requests(self) -> list[Held]:
        with self._lock:
            return list(self.received)

    def count(self, job: object | None = None) -> int:
        with self._lock:
            return sum(1 for held in self.received if job is None or held.job == str(job))

    def most_in_flight(self, *, since: float = float("-inf")) -> int:
        """The most requests held at once, as seen by requests that arrived at or after `since` (monotonic)."""
        return max((held.in_flight for held in self.requests() if held.at >= since), default=0)

    def close(self) -> None:
        self._closed.set()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def holding_receiver(holds: list[float]) -> Iterator[HoldingReceiver]:
    receiver = HoldingReceiver(holds)
    threading.Thread(target=receiver.server.serve_forever, daemon=True).start()
    try:
        yield receiver
    finally:
        receiver.close()
