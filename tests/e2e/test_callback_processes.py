"""Status callbacks as an operator runs them: `wjp serve` and `wjp worker` as real processes POST each finished job's
signed callback to a real receiver, a DELETE's too."""

from __future__ import annotations

from datetime import timedelta

from standardwebhooks.webhooks import Webhook

from ledger.timestamps import utcnow
from tests.conftest import free_port
from tests.e2e.conftest import Process, http, run_wjp, wait_for_http
from tests.e2e.test_processes import ledger_env, wait_until
from tests.webhook_sink import webhook_sink

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
