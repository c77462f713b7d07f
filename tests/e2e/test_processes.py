"""End to end, as an operator runs it: `wjp migrate`, `wjp serve`, `wjp worker` and `wjp reconcile` as
real processes on PostgreSQL and Redis, including a worker killed with `kill -9` mid-delivery."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

from ledger import claims, queries
from ledger.states import Status
from tests.actors.conftest import submit, wait_for_status
from tests.conftest import free_port
from tests.e2e.conftest import Process, http, process_env, run_wjp, wait_for_http
from tests.webhook_sink import Reply, webhook_sink

SEED = {
    "recipient": "user@example.com",
    "channel": "email",
    "message": "Halo dari sistem worker!",
    "idempotency_key": "abc123",
}


def ledger_env(database, redis_url: str, queue: str, tmp_path, **values: str) -> dict[str, str]:
    return process_env(
        DATABASE_URL=database.engine.url.render_as_string(hide_password=False),
        REDIS_URL=redis_url,
        WJP_QUEUE=queue,
        WJP_OUTBOX_DIR=str(tmp_path / "outbox"),
        WJP_WEBHOOK_ALLOW_PRIVATE="true",
        **values,
    )


def test_wjp_migrate_and_serve_answer_http_and_stop_cleanly(
    postgres_db, redis_server_url, queue_name, tmp_path, processes
):
    env = ledger_env(postgres_db, redis_server_url, queue_name, tmp_path)
    migrated = run_wjp(["migrate"], env)
    assert migrated.returncode == 0, migrated.stderr
    port = free_port()
    api = Process(["serve", "--port", str(port), "--workers", "1"], env, tmp_path / "api.log")
    processes.append(api)
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", api)

    status, created = http("POST", f"{base}/api/notifications", SEED)
    assert status == 202 and created["status"] == "PENDING"
    assert http("POST", f"{base}/api/notifications", SEED) == (200, {**created, "status": "PENDING"})
    status, job = http("GET", f"{base}/api/notifications/{created['job_id']}")
    assert status == 200 and job["recipient"] == "user@example.com"
    status, error = http("POST", f"{base}/api/notifications", {"channel": "email", "idempotency_key": "k"})
    assert status == 400 and error["error"] == "validation_error"
    assert http("GET", f"{base}/readyz")[0] == 200

    assert api.terminate() == 0


def test_a_bad_setting_stops_a_command_with_one_line_naming_it(tmp_path):
    result = run_wjp(["reconcile"], process_env(WJP_MAX_ATTEMPTS="many"))
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert "WJP_MAX_ATTEMPTS" in result.stderr and "Traceback" not in result.stderr


def test_wjp_reconcile_prints_one_json_line_and_fails_in_one_line_without_redis(
    postgres_db, redis_server_url, queue_name, tmp_path
):
    env = ledger_env(postgres_db, redis_server_url, queue_name, tmp_path)
    result = run_wjp(["reconcile"], env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip())
    assert set(report) == {"expired", "failed", "redispatched", "checked", "duration_ms"}

    unreachable = run_wjp(["reconcile"], {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert unreachable.returncode != 0
    assert unreachable.stderr.strip().count("\n") == 0 and "Redis" in unreachable.stderr


def test_a_worker_killed_mid_delivery_is_taken_back_and_the_job_delivered_by_a_new_worker(
    postgres_db, redis_server_url, queue_name, dispatcher, tmp_path, processes
):
    env = ledger_env(postgres_db, redis_server_url, queue_name, tmp_path, WJP_VISIBILITY_TIMEOUT="3")
    settings_like = type("S", (), {"max_attempts": 5})
    with webhook_sink([Reply(200, delay=30), Reply(200)]) as sink:
        worker = Process(["worker", "--processes", "1", "--threads", "2"], env, tmp_path / "worker1.log")
        processes.append(worker)
        job_id = submit(postgres_db, dispatcher, settings_like, channel="webhook", recipient=sink.url)
        wait_until(lambda: sink.count(job_id) == 1, worker)
        # When the worker is killed while the receiver still holds the request
        worker.kill()
        assert job_of(postgres_db, job_id).status is Status.PROCESSING

        replacement = Process(["worker", "--processes", "1", "--threads", "2"], env, tmp_path / "worker2.log")
        processes.append(replacement)
        time.sleep(3.2)  # the visibility timeout of this test
        result = run_wjp(["reconcile"], env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["expired"] == 1

        job = wait_for_status(postgres_db, job_id)
        assert (job.status, job.attempts) == (Status.SUCCESS, 2)
        assert sink.count(job_id) == 2
    assert replacement.terminate(timeout=10) == 0


def test_a_channel_that_kills_its_worker_reaches_failed_within_the_attempt_budget(
    postgres_db, redis_server_url, queue_name, dispatcher, tmp_path, processes
):
    env = ledger_env(
        postgres_db, redis_server_url, queue_name, tmp_path,
        WJP_VISIBILITY_TIMEOUT="2", WJP_MAX_ATTEMPTS="2", WJP_CHANNEL_MODULES="tests.e2e.killer_channel",
    )  # fmt: skip
    job_id = submit(postgres_db, dispatcher, type("S", (), {"max_attempts": 2}), channel="killer")
    for round_number in range(1, 4):
        worker = Process(["worker", "--processes", "1", "--threads", "1"], env, tmp_path / f"w{round_number}.log")
        processes.append(worker)
        # The delivery kills the worker process; Dramatiq's main process then stops as well
        worker.handle.wait(timeout=30)
        time.sleep(2.1)
        assert run_wjp(["reconcile"], env).returncode == 0
        if job_of(postgres_db, job_id).status is Status.FAILED:
            break
    job = job_of(postgres_db, job_id)
    assert (job.status, job.attempts) == (Status.FAILED, 2)
    assert "visibility timeout" in job.last_error
    assert round_number == 2


def test_sigterm_lets_a_worker_finish_the_attempt_in_hand_and_leaves_nothing_processing(
    postgres_db, redis_server_url, queue_name, dispatcher, tmp_path, processes
):
    env = ledger_env(postgres_db, redis_server_url, queue_name, tmp_path)
    with webhook_sink([Reply(200, delay=1.5)]) as sink:
        worker = Process(["worker", "--processes", "1", "--threads", "4"], env, tmp_path / "worker.log")
        processes.append(worker)
        jobs = [
            submit(postgres_db, dispatcher, type("S", (), {"max_attempts": 5}), channel="webhook", recipient=sink.url)
            for _ in range(3)
        ]
        wait_until(lambda: sink.count() >= 1, worker)
        assert worker.terminate(timeout=60) == 0
    states = {job_of(postgres_db, job_id).status for job_id in jobs}
    assert Status.PROCESSING not in states
    assert Status.SUCCESS in states
    # One human line per outcome, in the style the contract shows
    assert "✅ Job " in worker.output() and " success " in worker.output()


def test_a_worker_process_writes_its_own_outcome_lines_while_dramatiqs_main_process_is_stopped(
    postgres_db, redis_server_url, queue_name, dispatcher, tmp_path, processes
):
    env = ledger_env(postgres_db, redis_server_url, queue_name, tmp_path)
    worker = Process(["worker", "--processes", "1", "--threads", "2"], env, tmp_path / "worker.log")
    processes.append(worker)
    wait_until(lambda: "Worker process is ready" in worker.output(), worker)
    # The main process relays only the lines too long for one atomic write: stopped, it relays nothing
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        job_id = submit(postgres_db, dispatcher, type("S", (), {"max_attempts": 5}), channel="log")
        assert wait_for_status(postgres_db, job_id).status is Status.SUCCESS
        wait_until(lambda: f"Job {job_id} success" in worker.output(), worker, timeout=10)
        assert f"notification job={job_id} attempt=1" in worker.output()
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    assert worker.terminate(timeout=30) == 0


def test_wjp_prune_deletes_finished_jobs_older_than_the_duration_and_keeps_the_rest(
    postgres_db, redis_server_url, queue_name, tmp_path
):
    from datetime import timedelta

    from ledger.timestamps import utcnow

    env = ledger_env(postgres_db, redis_server_url, queue_name, tmp_path)
    old, recent = utcnow() - timedelta(days=40), utcnow() - timedelta(days=2)
    settings = type("S", (), {"max_attempts": 5})
    finished = {}
    for label, moment in (("old", old), ("recent", recent)):
        job_id = submit(postgres_db, None, settings, now=moment)
        postgres_db.run(lambda conn, j=job_id, m=moment: claims.claim(conn, j, 1, now=m, worker="w"))
        postgres_db.run(lambda conn, j=job_id, m=moment: claims.succeed(conn, j, 1, now=m))
        finished[label] = job_id
    waiting = submit(postgres_db, None, settings, now=old)

    result = run_wjp(["prune", "--older-than", "30d"], env)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"deleted": 1}
    assert job_of(postgres_db, finished["old"]) is None
    assert job_of(postgres_db, finished["recent"]) is not None
    assert job_of(postgres_db, waiting) is not None


def job_of(database, job_id: uuid.UUID) -> queries.JobView:
    return database.run(lambda conn: queries.get_job(conn, job_id, scope=None))


def wait_until(condition, process: Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.handle.poll() is not None:
            raise AssertionError(f"process exited early:\n{process.output()}")
        assert time.monotonic() < deadline, f"condition not met in {timeout}s:\n{process.output()}"
        time.sleep(0.05)
