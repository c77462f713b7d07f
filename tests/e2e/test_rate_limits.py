"""A producer key's rate held across two real API processes (`wjp serve`, gunicorn) sharing one Redis, lifted by
`wjp api-key set-rate NAME none`, and the `wjp api-key` rate commands' one-line errors."""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

from service.access import KEY_CACHE_SECONDS
from tests.conftest import free_port
from tests.e2e.conftest import Process, process_env, run_wjp, wait_for_http

RATE = 5
REQUESTS = 40


def submit(base: str, key: str) -> tuple[int, str | None, dict]:
    body = {"recipient": "user@example.com", "channel": "log", "message": "hi", "idempotency_key": uuid.uuid4().hex}
    request = urllib.request.Request(
        f"{base}/api/notifications",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers.get("Retry-After"), json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Retry-After"), json.loads(error.read())


def flood(bases: list[str], key: str) -> tuple[list[tuple[str, int, str | None, dict]], float]:
    """REQUESTS submissions spread evenly over `bases`, eight at a time; the answers and the seconds it took."""
    targets = [bases[i % len(bases)] for i in range(REQUESTS)]
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda base: (base, *submit(base, key)), targets))
    return answers, time.monotonic() - started


def test_two_api_processes_hold_one_keys_rate_together_until_set_rate_none_lifts_it(
    postgres_db, redis_server_url, queue_name, tmp_path, processes
):
    env = process_env(
        DATABASE_URL=postgres_db.engine.url.render_as_string(hide_password=False),
        REDIS_URL=redis_server_url,
        WJP_QUEUE=queue_name,
        WJP_OUTBOX_DIR=str(tmp_path / "outbox"),
    )
    assert run_wjp(["migrate"], env).returncode == 0
    created = run_wjp(["api-key", "create", "shared", "--rate", str(RATE)], env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    bases = []
    for n in range(2):
        port = free_port()
        api = Process(["serve", "--port", str(port), "--workers", "1"], env, tmp_path / f"api{n}.log")
        processes.append(api)
        bases.append(f"http://127.0.0.1:{port}")
        wait_for_http(f"{bases[-1]}/healthz", api)

    answers, elapsed = flood(bases, key)

    accepted = [a for a in answers if a[1] == 202]
    refused = [a for a in answers if a[1] != 202]
    # One bucket for both: it starts with one second's worth and refills at RATE per second, whatever process asks.
    assert 1 <= len(accepted) <= math.floor(RATE + RATE * elapsed), (len(accepted), elapsed)
    assert {base for base, *_ in refused} == set(bases)
    for _, status, retry_after, body in refused:
        assert status == 429 and body["error"] == "rate_limited" and set(body) == {"error", "message", "details"}
        assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1

    lifted = run_wjp(["api-key", "set-rate", "shared", "none"], env)
    assert lifted.returncode == 0, lifted.stderr
    time.sleep(KEY_CACHE_SECONDS + 0.5)
    answers, elapsed = flood(bases, key)

    assert RATE + RATE * elapsed < REQUESTS, "the flood was too slow for the old rate to have refused any of it"
    assert [status for _, status, _, _ in answers] == [202] * REQUESTS


def test_wjp_api_key_rate_commands_fail_in_one_line(postgres_db, tmp_path):
    env = process_env(DATABASE_URL=postgres_db.engine.url.render_as_string(hide_password=False))
    assert run_wjp(["api-key", "create", "known"], env).returncode == 0

    for args, words in (
        (["api-key", "set-rate", "nobody", "3"], "no active API key is named 'nobody'"),
        (["api-key", "set-rate", "known", "fast"], "'fast' is not a number"),
        (["api-key", "set-rate", "known", "0"], "'0' is not a number"),
        (["api-key", "create", "other", "--rate", "-2"], "'-2' is not a number"),
    ):
        result = run_wjp(args, env)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr

    listed = run_wjp(["api-key", "list"], env).stdout
    assert "other" not in listed
    assert run_wjp(["api-key", "set-rate", "known", "2.5"], env).returncode == 0
    assert "2.5/s" in run_wjp(["api-key", "list"], env).stdout


def test_a_bad_wjp_api_key_rate_stops_wjp_serve_in_one_line_naming_it(tmp_path):
    env = process_env(DATABASE_URL=f"sqlite:///{tmp_path / 'l.sqlite3'}", WJP_API_KEY_RATE="fast")

    result = run_wjp(["serve", "--port", str(free_port())], env)

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "WJP_API_KEY_RATE" in result.stderr, result.stderr
