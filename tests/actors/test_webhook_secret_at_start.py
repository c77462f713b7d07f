"""`WJP_WEBHOOK_SECRET` at start: a short key stops a real `wjp worker`; without one, it says webhooks go unsigned."""

from __future__ import annotations

import base64
import time

import pytest

from actors.settings import Settings, SettingsError
from tests.e2e.conftest import Process, process_env


def secret(key_bytes: int) -> str:
    return "whsec_" + base64.b64encode(b"k" * key_bytes).decode()


def worker(tmp_path, redis_server_url, queue_name, **env: str) -> Process:
    values = process_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'wjp.sqlite3'}", REDIS_URL=redis_server_url, WJP_QUEUE=queue_name, **env
    )
    return Process(["worker", "--processes", "1", "--threads", "1"], values, tmp_path / "worker.log")


def wait_for(condition, process: Process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting:\n{process.output()}"
        time.sleep(0.1)


def test_a_webhook_secret_of_23_key_bytes_stops_a_worker_at_start_with_one_line(tmp_path, redis_server_url, queue_name):
    process = worker(tmp_path, redis_server_url, queue_name, WJP_WEBHOOK_SECRET=secret(23))
    try:
        wait_for(lambda: process.handle.poll() is not None, process)
        assert process.handle.returncode == 1
        (line,) = process.output().strip().splitlines()
        assert "WJP_WEBHOOK_SECRET" in line and "24" in line
    finally:
        process.kill()


def test_a_worker_without_a_webhook_secret_says_once_at_start_that_webhooks_go_unsigned(
    tmp_path, redis_server_url, queue_name
):
    process = worker(tmp_path, redis_server_url, queue_name)
    try:
        wait_for(lambda: "unsigned" in process.output(), process)
        assert process.handle.poll() is None
        assert process.output().count("unsigned") == 1
    finally:
        process.kill()


def test_a_worker_with_a_webhook_secret_of_24_key_bytes_starts_without_a_word_about_signing(
    tmp_path, redis_server_url, queue_name
):
    process = worker(tmp_path, redis_server_url, queue_name, WJP_WEBHOOK_SECRET=secret(24))
    try:
        wait_for(lambda: "Worker process is ready" in process.output() or process.handle.poll() is not None, process)
        assert process.handle.poll() is None, process.output()
        assert "unsigned" not in process.output()
    finally:
        process.kill()


@pytest.mark.parametrize(("key_bytes", "accepted"), [(1, False), (16, False), (23, False), (24, True), (64, True)])
def test_the_webhook_secret_needs_at_least_24_key_bytes(key_bytes, accepted):
    env = {"WJP_WEBHOOK_SECRET": secret(key_bytes)}
    if accepted:
        assert Settings.from_env(env).channels.webhook_secret == env["WJP_WEBHOOK_SECRET"]
    else:
        with pytest.raises(SettingsError, match="WJP_WEBHOOK_SECRET"):
            Settings.from_env(env)
