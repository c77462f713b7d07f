"""The API's server while a gunicorn worker stops (max_requests here; a HUP or SIGTERM takes the same path): a
connection the worker accepted just before has its request served, not reset."""

from __future__ import annotations

import importlib.metadata
import json
import socket
import time
from pathlib import Path

import pytest

from service.http_worker import FirstRequestServedProtocol, HttptoolsWorker
from tests.conftest import free_port
from tests.e2e.conftest import ROOT, Process, process_env, wait_for_http
from tests.service.conftest import notification

WAIT = 60.0


def wait_for_line(api: Process, line: str, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while api.output().count(line) < count:
        assert time.monotonic() < deadline, api.output()
        time.sleep(0.05)


def read_until_closed(connection: socket.socket) -> bytes:
    answer = b""
    while chunk := connection.recv(65536):
        answer += chunk
    return answer


@pytest.mark.slow
def test_a_stopping_worker_serves_the_request_of_a_connection_it_had_just_accepted(
    postgres_db, redis_server_url, queue_name, tmp_path
):
    env = process_env(
        DATABASE_URL=postgres_db.engine.url.render_as_string(hide_password=False),
        REDIS_URL=redis_server_url,
        WJP_QUEUE=queue_name,
        TMPDIR=str(tmp_path),
        # Every worker stops after one request.
        GUNICORN_CMD_ARGS="--max-requests 1 --max-requests-jitter 0",
    )
    port = free_port()
    api = Process(["serve", "--port", str(port), "--workers", "1"], env, tmp_path / "api.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/healthz", api)  # the first worker's one request
        wait_for_line(api, "Application startup complete", 2)

        # Two connections the second worker accepts before the one request that stops it: with one worker they are
        # taken from the listen queue in order, so both are its own when its request is answered.
        sending = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        silent = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        last = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        last.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        assert last.recv(65536).startswith(b"HTTP/1.1 200")
        wait_for_line(api, "Shutting down", 2)

        body = json.dumps(notification()).encode()
        sending.sendall(
            b"POST /api/notifications HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        answer = read_until_closed(sending)
        head, _, created = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 202"), (answer, api.output())
        assert b"connection: close" in head.lower()
        assert json.loads(created)["status"] == "PENDING"

        # A connection that never brings a request is closed after the keep-alive timeout, and the worker stops.
        assert read_until_closed(silent) == b""
        wait_for_line(api, "Booting worker", 3)
        for connection in (sending, silent, last):
            connection.close()
        assert api.terminate() == 0
    finally:
        api.kill()


def test_the_installed_uvicorn_is_the_one_its_connection_protocol_was_tested_with():
    # FirstRequestServedProtocol overrides uvicorn's connection internals, tested above on the uvicorn that
    # constraints.txt pins; an install that drifts from that pin fails here.
    pins = dict(
        line.split("==", 1)
        for line in (Path(ROOT) / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert importlib.metadata.version("uvicorn") == pins["uvicorn"]
    assert HttptoolsWorker.CONFIG_KWARGS["http"] is FirstRequestServedProtocol
