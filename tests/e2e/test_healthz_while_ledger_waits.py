"""`wjp serve` on its event loop: `/healthz` answers while a request's ledger statement is stuck in PostgreSQL
(held behind a lock the test takes), and that request still completes once the lock is gone."""

from __future__ import annotations

import json
import threading
import urllib.request

from sqlalchemy import text

from tests.conftest import free_port
from tests.e2e.conftest import Process, http, wait_for_http
from tests.e2e.test_processes import ledger_env, wait_until
from tests.service.conftest import notification


def waiting_on_a_lock(database) -> int:
    """Backends of the test's database waiting for a lock: the API's INSERT behind the test's table lock."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    return database.run(lambda conn: conn.execute(text(query)).scalar_one())


def test_healthz_answers_while_a_post_waits_in_the_database_and_the_post_then_completes(
    postgres_db, redis_server_url, queue_name, tmp_path
):
    env = ledger_env(postgres_db, redis_server_url, queue_name, tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # One process: the stuck request and /healthz are served by the same event loop.
    api = Process(["serve", "--port", str(port), "--workers", "1"], env, tmp_path / "api.log")
    try:
        wait_for_http(f"{base}/healthz", api)
        answers: list[tuple[int, dict]] = []
        with postgres_db.engine.connect() as locker:
            locker.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
            body = json.dumps(notification(channel="log")).encode()
            request = urllib.request.Request(f"{base}/api/notifications", data=body, method="POST",
                                             headers={"Content-Type": "application/json"})  # fmt: skip

            def post() -> None:
                with urllib.request.urlopen(request, timeout=60) as answer:
                    answers.append((answer.status, json.loads(answer.read())))

            posting = threading.Thread(target=post, daemon=True)
            posting.start()
            wait_until(lambda: waiting_on_a_lock(postgres_db) >= 1, api)

            # The POST's INSERT is waiting behind the lock, and will as long as the lock is held.
            assert http("GET", f"{base}/healthz") == (200, {"status": "ok"})
            assert posting.is_alive() and answers == []
            assert waiting_on_a_lock(postgres_db) >= 1
            locker.rollback()  # lets the INSERT go
        posting.join(timeout=60)
        assert [status for status, _ in answers] == [202], api.output()
    finally:
        api.kill()
