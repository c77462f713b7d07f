"""The webhook receiver of a chaos run: answers after a short think, and records every request with its
`webhook-id`, the attempt number in its body, its answer, and whether it is still in flight. A notification whose
metadata says `flaky` is refused with a 503 at its first attempt, so that retries wait in Redis's delay queue.
Asked to (`hold`), it keeps the requests it is told to pick unanswered until `release`: deliveries certainly in
flight, for a kill to cut short."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: Longest a request is held when nobody releases it (a run that broke midway).
HOLD_LIMIT = 60.0


@dataclass
class Delivered:
    """One request the sink received."""

    webhook_id: str
    job_id: str
    attempt: int
    #: The answer given: 200 (delivered) or 503 (a transient refusal, retried by the worker).
    status: int
    arrived: float
    #: Wall-clock arrival, to compare with a notification's `send_at`.
    arrived_wall: float
    answered: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status == 200


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Every worker thread of every worker may connect at once; the default backlog of 5 would make
    # connections wait for SYN retransmits, which looks like a slow receiver.
    request_queue_size = 256


class ChaosSink:
    """Records deliveries; `think` is how long each answer takes, the window in which a kill lands mid-delivery."""

    def __init__(self, think: float = 0.02) -> None:
        self.think = think
        self._lock = threading.Lock()
        self._deliveries: list[Delivered] = []
        self._pick: Callable[[Delivered], bool] | None = None
        self._held: list[Delivered] = []
        self._released = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    document = json.loads(body)
                    job_id, attempt = str(document["job_id"]), int(document["attempt"])
                    flaky = bool((document.get("metadata") or {}).get("flaky"))
                except (ValueError, KeyError, TypeError, AttributeError):
                    job_id, attempt, flaky = "", 0, False
                status = 503 if flaky and attempt == 1 else 200
                webhook_id = self.headers.get("webhook-id", "")
                record = Delivered(webhook_id, job_id, attempt, status, time.monotonic(), time.time())
                with sink._lock:
                    sink._deliveries.append(record)
                sink._hold_if_picked(record)
                time.sleep(sink.think)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the worker was killed while we thought
                finally:
                    record.answered = time.monotonic()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def hold(self, pick: Callable[[Delivered], bool]) -> None:
        """From now on, keep every request that `pick` chooses unanswered until `release` (its sender waits)."""
        with self._lock:
            self._pick, self._held, self._released = pick, [], threading.Event()

    def held(self) -> list[Delivered]:
        with self._lock:
            return list(self._held)

    def release(self) -> list[Delivered]:
        """Stop holding and answer the held requests (their sender may be gone by now); returns them."""
        with self._lock:
            held, self._pick, self._held = self._held, None, []
            self._released.set()
        return held

    def _hold_if_picked(self, record: Delivered) -> None:
        with self._lock:
            pick, released = self._pick, self._released
        if pick is None or not pick(record):
            return
        with self._lock:
            if released is not self._released or released.is_set():
                return  # released while `pick` looked
            self._held.append(record)
        released.wait(HOLD_LIMIT)

    def requests(self) -> list[Delivered]:
        with self._lock:
            return list(self._deliveries)

    def deliveries(self) -> list[Delivered]:
        """The requests answered 200: what a receiver counts as delivered."""
        return [d for d in self.requests() if d.delivered]

    def in_flight(self) -> list[Delivered]:
        with self._lock:
            return [d for d in self._deliveries if d.answered is None]

    def count(self) -> int:
        with self._lock:
            return len(self._deliveries)

    def per_attempt(self) -> Counter[tuple[str, int]]:
        """How often each (webhook-id, attempt) arrived: anything above 1 is one attempt delivered twice."""
        return Counter((d.webhook_id, d.attempt) for d in self.requests())


@contextmanager
def running_sink(think: float = 0.02) -> Iterator[ChaosSink]:
    sink = ChaosSink(think)
    thread = threading.Thread(target=sink.server.serve_forever, name="chaos-sink", daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.server.shutdown()
        sink.server.server_close()
