"""Graceful shutdown under load, as a deployment does it: SIGTERM to the API (gunicorn) and to the reconciler
loop lets the work in hand finish, exits 0, and leaves nothing half-done. (The worker's turn is in
`test_processes.py`.)"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from datetime import timedelta
from http.client import HTTPException
from pathlib import Path

from sqlalchemy import func, insert, select

from actors.broker import redis_message_id
from ledger.schema import jobs
from ledger.states import Status
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from tests.conftest import free_port
from tests.e2e.conftest import Process, http, wait_for_http
from tests.e2e.test_processes import ledger_env, wait_until


def notification(key: str) -> dict[str, str]:
    return {"recipient": "user@example.com", "channel": "email", "message": "Halo!", "idempotency_key": key}


def server_side_accepted(server_port: int, client_port: int) -> bool:
    """Whether the server has accept()ed our connection: until then the kernel lists its socket with inode 0."""
    wanted_local, wanted_remote = f"{server_port:04X}", f"{client_port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1], fields[9]
            if local == wanted_local and remote == wanted_remote and inode != "0":
                return True
    return False


class Load:
    """Producer threads POSTing new notifications until the API stops answering; every answer is kept."""

    def __init__(self, base: str, threads: int = 4) -> None:
        self.base = base
        self.answers: list[tuple[str, int, dict]] = []
        #: Keys whose request got no answer: refused or reset, as the API stopped taking connections.
        self.unanswered: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._post_until_refused, daemon=True) for _ in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float = 60.0) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def _post_until_refused(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            key = f"load-{uuid.uuid4().hex}"
            try:
                status, body = http("POST", f"{self.base}/api/notifications", notification(key))
            except (OSError, HTTPException):
                with self._lock:
                    self.unanswered.append(key)
                return
            with self._lock:
                self.answers.append((key, status, body))


def test_sigterm_lets_the_api_finish_the_requests_in_hand_under_load_and_exit_0(
    postgres_db, redis_server_url, queue_name, tmp_path, processes
):
    env = ledger_env(postgres_db, redis_server_url, queue_name, tmp_path)
    port = free_port()
    api = Process(["serve", "--port", str(port), "--workers", "2"], env, tmp_path / "api.log")
    processes.append(api)
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", api)

    # A request in hand: a worker has accepted it and is reading its body when the SIGTERM comes.
    body = json.dumps(notification("in-hand")).encode()
    held = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = "POST /api/notifications HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    held.sendall(f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body[:10])
    wait_until(lambda: server_side_accepted(port, held.getsockname()[1]), api)

    load = Load(base)
    load.start()
    wait_until(lambda: load.count() >= 20, api)
    api.handle.send_signal(15)
    # The worker holding our request is shutting down and waits for the connections it has open, ours among them.
    wait_until(lambda: "Waiting for connections to close" in api.output(), api)
    held.sendall(body[10:])
    answer = held.makefile("rb").read().decode()
    held.close()

    assert api.handle.wait(timeout=60) == 0, api.output()
    assert answer.startswith("HTTP/1.1 202"), answer
    load.join()
    statuses = {status for _, status, _ in load.answers}
    assert statuses <= {202}, [a for a in load.answers if a[1] != 202][:5]
    recorded = postgres_db.run(lambda conn: conn.execute(select(jobs.c.idempotency_key, jobs.c.id)).all())
    by_key = {row.idempotency_key: str(row.id) for row in recorded}
    assert "in-hand" in by_key
    # Every answered request is in the ledger with the job id it was told; a request that got no answer was
    # never taken in hand (it waited in the listen backlog), so nothing was recorded for it.
    assert all(by_key.get(key) == answered["job_id"] for key, _, answered in load.answers)
    assert [key for key in load.unanswered if key in by_key] == []


def test_sigterm_lets_the_reconciler_loop_finish_its_pass_and_exit_0(
    postgres_db, redis_server_url, queue_name, dispatcher, tmp_path, processes
):
    env = ledger_env(
        postgres_db, redis_server_url, queue_name, tmp_path, WJP_VISIBILITY_TIMEOUT="5", WJP_RECONCILE_INTERVAL="60"
    )
    # Enough claims abandoned by a vanished worker that the pass takes many batches.
    count = 6000
    now = utcnow()
    claimed = now - timedelta(minutes=5)
    rows = [
        {
            "id": uuid.uuid4(),
            "idempotency_key": f"abandoned-{n}",
            "payload_hash": "0" * 64,
            "recipient": "user@example.com",
            "channel": "email",
            "message": "Halo!",
            "status": Status.PROCESSING.value,
            "attempts": 1,
            "max_attempts": 5,
            "next_attempt_at": claimed,
            "dispatch_seq": 1,
            "claimed_at": claimed,
            "worker": "vanished:1",
            "created_at": claimed,
            "updated_at": claimed,
        }
        for n in range(count)
    ]
    postgres_db.run(lambda conn: conn.execute(insert(jobs), rows), transaction=True)

    def processing() -> int:
        query = select(func.count()).select_from(jobs).where(jobs.c.status == Status.PROCESSING.value)
        return postgres_db.run(lambda conn: conn.execute(query).scalar_one())

    reconciler = Process(["reconcile", "--loop"], env, tmp_path / "reconciler.log")
    processes.append(reconciler)
    # SIGTERM in the middle of the pass: some batches done, some not.
    wait_until(lambda: processing() < count, reconciler, timeout=60)
    assert processing() > 0, "the pass ended before the SIGTERM; seed more rows"
    assert reconciler.terminate(timeout=60) == 0, reconciler.output()

    assert processing() == 0
    reports = [json.loads(line) for line in reconciler.output().splitlines() if line.startswith("{")]
    assert [(r["expired"], r["failed"]) for r in reports] == [(count, 0)]
    # Every job it took back has its new message in Redis: nothing is left between the ledger and Redis.
    retried = postgres_db.run(
        lambda conn: conn.execute(
            select(jobs.c.id, jobs.c.dispatch_seq, jobs.c.next_attempt_at).where(jobs.c.status == Status.RETRY.value)
        ).all()
    )
    assert len(retried) == count
    dispatches = [Dispatch(row.id, row.dispatch_seq, row.next_attempt_at) for row in retried]
    assert dispatcher.missing(dispatches) == []
    assert all(redis_message_id(d).endswith(".2") for d in dispatches)


def test_sigterm_stops_an_idle_reconciler_loop_in_its_wait_for_the_next_pass_with_exit_0(
    postgres_db, redis_server_url, queue_name, tmp_path, processes
):
    env = ledger_env(postgres_db, redis_server_url, queue_name, tmp_path, WJP_RECONCILE_INTERVAL="3600")
    reconciler = Process(["reconcile", "--loop"], env, tmp_path / "reconciler.log")
    processes.append(reconciler)
    # Its first pass is done: it now waits an hour for the next one
    wait_until(lambda: '"expired"' in reconciler.output(), reconciler)

    # Stopped within a minute, it cannot have waited out the hour; and no pass ran after the signal
    assert reconciler.terminate(timeout=60) == 0, reconciler.output()
    assert reconciler.output().count('"expired"') == 1, reconciler.output()
