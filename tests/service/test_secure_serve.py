"""`wjp serve` on a public address: a real gunicorn bound to 0.0.0.0 starts only behind a real admin token."""

from __future__ import annotations

import time
import urllib.request

import pytest

from ledger.database import Database
from ledger.migrate import upgrade
from tests.conftest import free_port
from tests.e2e.conftest import Process, process_env, wait_for_http

REAL_TOKEN = "k3P9vQx2LmZr7TfW8yNc4HbJ6sGd1AeU"


def serve(tmp_path, host: str, token: str | None) -> tuple[Process, int]:
    database_url = f"sqlite:///{tmp_path / 'wjp.sqlite3'}"
    upgrade(Database(database_url))
    env = process_env(DATABASE_URL=database_url, TMPDIR=str(tmp_path), **({"WJP_ADMIN_TOKEN": token} if token else {}))
    port = free_port()
    return Process(["serve", "--host", host, "--port", str(port), "--workers", "1"], env, tmp_path / "api.log"), port


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.parametrize(
    "token",
    [None, "s3cret", "CHANGE-ME-CHANGE-ME-CHANGE-ME-CHANGE-ME", "please-changeme-0123456789abcdefghij", "x" * 40],
    ids=["unset", "short", "CHANGE-ME", "changeme", "xxx"],
)
def test_wjp_serve_on_every_interface_refuses_to_start_without_a_real_admin_token(tmp_path, token):
    api, port = serve(tmp_path, "0.0.0.0", token)
    try:
        deadline = time.monotonic() + 60
        while api.handle.poll() is None and time.monotonic() < deadline:
            assert not answers(port), f"gunicorn served on 0.0.0.0 with WJP_ADMIN_TOKEN={token!r}"
            time.sleep(0.2)
        assert api.handle.poll() == 1
        lines = api.output().strip().splitlines()
        assert len(lines) == 1 and "WJP_ADMIN_TOKEN" in lines[0], api.output()
        assert token is None or token not in lines[0]
    finally:
        api.kill()


def test_wjp_serve_on_every_interface_starts_with_a_real_token_and_says_that_api_is_open(tmp_path):
    api, port = serve(tmp_path, "0.0.0.0", REAL_TOKEN)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", api)
        assert api.output().count("/api/* is open") == 1, api.output()
    finally:
        api.kill()


def test_wjp_serve_on_loopback_needs_no_token(tmp_path):
    api, port = serve(tmp_path, "127.0.0.1", None)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", api)
    finally:
        api.kill()
