"""The producers of a chaos run: client threads that POST every notification twice with one idempotency key,
riding out 503s and dropped connections with the same key, and recording every answer they get (and every
exchange that got none, with why)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

#: Tries per request before a producer gives up on it (each 503 or dropped connection is one).
MAX_TRIES = 60
#: Seconds a producer waits for an answer.
REQUEST_TIMEOUT = 20.0
#: The histogram's name for a request that got no HTTP answer at all.
CONNECTION_ERROR = "connection_error"


@dataclass(frozen=True)
class Answer:
    """One HTTP exchange: when it started and ended (monotonic), and its status (0: no answer, see `error`)."""

    started: float
    ended: float
    status: int
    #: Why there was no answer (refused, reset, timed out): the exception's type and text.
    error: str = ""


@dataclass
class Tally:
    """What the producers saw, shared by their threads under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: list[Answer] = field(default_factory=list)
    #: idempotency key → the job id of each answered POST of it (two when all went well).
    job_ids: dict[str, list[str]] = field(default_factory=dict)
    #: job id → its `send_at` (POSIX seconds), for the scheduled ones.
    send_at: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    #: Keys whose first POST has been answered: the run's progress, which the fault schedule follows.
    accepted_keys: int = 0
    finished_keys: int = 0

    def histogram(self) -> dict[str, int]:
        with self.lock:
            counts = Counter(str(a.status) if a.status else CONNECTION_ERROR for a in self.answers)
        return dict(sorted(counts.items()))

    def transport_errors(self) -> list[Answer]:
        """The exchanges that got no HTTP answer at all: the API never goes away, so each one is a failure."""
        with self.lock:
            return [a for a in self.answers if not a.status]

    def accepted(self) -> set[str]:
        with self.lock:
            return {job_id for ids in self.job_ids.values() for job_id in ids}


class Producers:
    """`threads` clients sharing `jobs` notifications to `sink_url`, spread over at least `spread` seconds.

    Every `SCHEDULED_EVERY`-th notification has a `send_at` a few seconds ahead and every `FLAKY_EVERY`-th is
    refused once by the sink, so that at any moment some messages wait in Redis's delay queue.
    """

    SCHEDULED_EVERY = 4
    FLAKY_EVERY = 10

    def __init__(self, api_url: str, sink_url: str, *, jobs: int, threads: int, spread: float, run_id: str) -> None:
        parts = urlsplit(api_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.sink_url = sink_url
        self.jobs = jobs
        self.spread = spread
        self.run_id = run_id
        self.tally = Tally()
        self._next = 0
        self._next_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, name=f"producer-{i}", daemon=True) for i in range(threads)]
        self._started = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def _take(self) -> int | None:
        with self._next_lock:
            if self._next >= self.jobs:
                return None
            index, self._next = self._next, self._next + 1
        # Paced: job i starts no sooner than i/jobs of the spread, so the faults land amid the traffic.
        wait = self._started + self.spread * index / self.jobs - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        return index

    def _work(self) -> None:
        while (index := self._take()) is not None:
            key = f"chaos-{self.run_id}-{index}"
            body: dict[str, object] = {
                "recipient": self.sink_url,
                "channel": "webhook",
                "message": f"chaos notification {index}",
                "metadata": {"index": index, "flaky": index % self.FLAKY_EVERY == 1},
                "idempotency_key": key,
            }
            send_at = None
            if index % self.SCHEDULED_EVERY == 2:
                send_at = datetime.now(UTC) + timedelta(seconds=2 + index % 5)
                body["send_at"] = send_at.isoformat()
            for replay in (False, True):
                job_id = self._post_until_answered(body, replay=replay)
                with self.tally.lock:
                    if job_id is not None:
                        self.tally.job_ids.setdefault(key, []).append(job_id)
                        if send_at is not None:
                            self.tally.send_at[job_id] = send_at.timestamp()
                    if not replay:
                        self.tally.accepted_keys += 1
            with self.tally.lock:
                self.tally.finished_keys += 1
                ids = set(self.tally.job_ids.get(key, []))
                if len(ids) > 1:
                    self.tally.failures.append(f"key {key} answered with different job ids: {sorted(ids)}")

    def _post_until_answered(self, body: dict[str, object], *, replay: bool) -> str | None:
        """The job id of the answer (202, or 200 for a replay), retrying 503s and dropped connections."""
        payload = json.dumps(body).encode()
        pause = 0.05
        for _ in range(MAX_TRIES):
            started = time.monotonic()
            status, document, error = self._post(payload)
            with self.tally.lock:
                self.tally.answers.append(Answer(started, time.monotonic(), status, error))
            if status in (200, 202):
                if replay and status != 200:
                    self._fail(f"the replay of {body['idempotency_key']} got {status}, not 200: a second row")
                return str(document["job_id"])
            if status not in (0, 503):
                self._fail(f"POST of {body['idempotency_key']} got {status}: {document}")
                return None
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
        self._fail(f"POST of {body['idempotency_key']} was not answered in {MAX_TRIES} tries")
        return None

    def _post(self, payload: bytes) -> tuple[int, dict, str]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT)
        try:
            connection.request("POST", "/api/notifications", body=payload, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            return 0, {}, f"{type(exc).__name__}: {exc}"
        finally:
            connection.close()
        try:
            document = json.loads(raw)
        except ValueError:
            document = {"unreadable": raw[:200].decode(errors="replace")}
        return response.status, document, ""

    def _fail(self, text: str) -> None:
        with self.tally.lock:
            self.tally.failures.append(text)
