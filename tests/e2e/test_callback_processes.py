"""Status callbacks as an operator runs them: `wjp serve` and `wjp worker` as real processes POST each finished job's
signed callback to a real receiver, a DELETE's too; a worker killed with `kill -9` while it sends a callback leaves it
to the reconciler and the next worker."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from urllib.parse import urlsplit

from standardwebhooks.webhooks import Webhook

from ledger import callbacks
from ledger.states import Status
from ledger.timestamps import utcnow
from tests.actors.conftest import submit, wait_for_status
from tests.conftest import free_port
from tests.e2e.conftest import Process, http, run_wjp, wait_for_http
from tests.e2e.test_processes import ledger_env, wait_until
from tests.webhook_sink import Reply, webhook_sink

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_a_served_and_worked_job_and_a_cancelled_one_each_post_their_signed_callback(
    postgres_db, redis_server_url, queue_name, tmp_path, processes
):
    env = ledger_env(postgres_db, redis_server_url, queue_name, tmp_path, WJP_WEBHOOK_SECRET=SECRET)
    assert run_wjp(["migrate"], env).returncode == 0
    port = free_port()
    api = Process(["serve", "--port", str(port), "--workers", "1"], env, tmp_path / "api.log")
    worker = Process(["worker", "--processes", "1", "--threads", "2"], env, tmp_path / "worker.log")
    processes.extend([api, worker])
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", api)
    with webhook_sink() as sink:
        body = {"recipient": "someone", "channel": "log", "message": "hi", "callback_url": sink.url}
        status, sent = http("POST", f"{base}/api/notifications", {**body, "idempotency_key": "sent"})
        assert status == 202
        later = (utcnow() + timedelta(hours=1)).isoformat()
        status, held = http("POST", f"{base}/api/notifications", {**body, "idempotency_key": "held", "send_at": later})
        assert status == 202
        assert http("DELETE", f"{base}/api/notifications/{held['job_id']}")[0] == 200
        wait_until(lambda: sink.count() == 2, worker)

        def shown_delivered() -> bool:
            return http("GET", f"{base}/api/notifications/{sent['job_id']}")[1]["callback"]["status"] == "delivered"

        wait_until(shown_delivered, worker)
    events = {r.headers["webhook-id"]: Webhook(SECRET).verify(r.body, r.headers)["type"] for r in sink.requests()}
    assert events == {
        f"{sent['job_id']}.SUCCESS": "notification.succeeded",
        f"{held['job_id']}.CANCELLED": "notification.cancelled",
    }
    assert worker.terminate(timeout=20) == 0


def test_a_worker_killed_while_it_sends_a_finished_jobs_callback_leaves_it_to_the_reconciler_and_a_new_worker(
    postgres_db, redis_server_url, queue_name, dispatcher, tmp_path, processes
):
    env = ledger_env(postgres_db, redis_server_url, queue_name, tmp_path, WJP_VISIBILITY_TIMEOUT="3")
    settings_like = type("S", (), {"max_attempts": 5})
    with webhook_sink([Reply(200, delay=30), Reply(200)]) as sink:
        worker = Process(["worker", "--processes", "1", "--threads", "2"], env, tmp_path / "worker1.log")
        processes.append(worker)
        fields = {"callback_url": sink.url, "callback_destination": f"webhook:127.0.0.1:{urlsplit(sink.url).port}"}
        job_id = submit(postgres_db, dispatcher, settings_like, **fields)
        # The job succeeded and a worker is sending its callback when it is killed.
        wait_until(lambda: sink.count(f"{job_id}.SUCCESS") == 1, worker)
        worker.kill()
        assert wait_for_status(postgres_db, job_id).status is Status.SUCCESS
        held = postgres_db.run(lambda conn: callbacks.callback_view(conn, job_id))
        assert (held.status, held.attempts) == (Status.PROCESSING, 1)

        replacement = Process(["worker", "--processes", "1", "--threads", "2"], env, tmp_path / "worker2.log")
        processes.append(replacement)
        time.sleep(3.2)  # the visibility timeout of this test
        result = run_wjp(["reconcile"], env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["expired"] == 1

        def delivered() -> bool:
            view = postgres_db.run(lambda conn: callbacks.callback_view(conn, job_id))
            return view.status is Status.SUCCESS

        wait_until(delivered, replacement)
        assert sink.count(f"{job_id}.SUCCESS") == 2
    assert postgres_db.run(lambda conn: callbacks.callback_view(conn, job_id)).attempts == 2
    assert wait_for_status(postgres_db, job_id).attempts == 1
    assert replacement.terminate(timeout=10) == 0
