"""`wjp dev` from a fresh directory with no DATABASE_URL or REDIS_URL: the seed example reaches SUCCESS,
its .eml lands in var/outbox/, and one SIGTERM leaves no process behind."""

from __future__ import annotations

import time

from tests.conftest import free_port
from tests.e2e.conftest import Process, alive, descendants, http, process_env, wait_for_http

SEED = {
    "recipient": "user@example.com",
    "channel": "email",
    "message": "Halo dari sistem worker!",
    "idempotency_key": "abc123",
}


def test_wjp_dev_delivers_the_seed_example_and_stops_every_process_it_started(tmp_path, processes):
    port = free_port()
    dev = Process(["dev", "--port", str(port)], process_env(), tmp_path / "dev.log", cwd=tmp_path)
    processes.append(dev)
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", dev, timeout=90)

    status, created = http("POST", f"{base}/api/notifications", SEED)
    assert status == 202
    deadline = time.monotonic() + 30
    while http("GET", f"{base}/api/notifications/{created['job_id']}")[1]["status"] != "SUCCESS":
        assert time.monotonic() < deadline, dev.output()
        time.sleep(0.1)
    assert (tmp_path / "var" / "outbox" / f"{created['job_id']}.eml").exists()
    assert (tmp_path / "var" / "wjp.sqlite3").exists()

    started = descendants(dev.pid)
    assert len(started) >= 4  # gunicorn and its workers, dramatiq and its worker process, the reconciler
    assert dev.terminate(timeout=90) == 0
    time.sleep(0.5)
    assert [pid for pid in started if alive(pid)] == []
