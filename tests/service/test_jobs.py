"""Reading, cancelling and retrying jobs, the queue statistics, and the admin token, through the app factory.

Worker-side state changes are driven with the ledger's own transitions on the test's ledger, as a worker would."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from falcon import testing

from ledger import claims
from ledger.database import Database
from ledger.timestamps import utcnow
from tests.service.conftest import Worker, assert_error, ledger_counts, notification, post

JOB_FIELDS = {
    "job_id",
    "status",
    "recipient",
    "channel",
    "idempotency_key",
    "attempts",
    "max_attempts",
    "next_attempt_at",
    "last_error",
    "created_at",
    "updated_at",
    "completed_at",
}
#: The contract's keys, and `cancelled`, an extra the contract welcomes that this service always gives.
STATS_KEYS = {"pending", "retry", "processing", "success", "failed", "cancelled", "avg_attempts_success"}


@pytest.fixture
def worker(database: Database) -> Worker:
    return Worker(database)


def create(client: testing.TestClient, **fields) -> str:
    result = post(client, notification(**fields))
    assert result.status_code == 202, result.text
    return result.json["job_id"]


def get(client: testing.TestClient, job_id: str) -> dict:
    result = client.simulate_get(f"/api/notifications/{job_id}")
    assert result.status_code == 200, result.text
    return result.json


def moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


# --- GET /api/notifications/{job_id} --------------------------------------------------------------------------------


def test_a_new_job_shows_every_field_of_the_contract(client):
    body = notification(channel="webhook", recipient="https://example.com/hook", subject="S", metadata={"k": "v"})
    created = post(client, body).json

    job = get(client, created["job_id"])

    assert set(job) >= JOB_FIELDS
    assert job["job_id"] == created["job_id"]
    assert job["status"] == "PENDING"
    assert (job["recipient"], job["channel"]) == ("https://example.com/hook", "webhook")
    assert job["idempotency_key"] == body["idempotency_key"]
    assert (job["attempts"], job["max_attempts"]) == (0, 5)
    assert job["last_error"] is None and job["completed_at"] is None
    assert job["created_at"] == created["created_at"]
    for name in ("created_at", "updated_at", "next_attempt_at"):
        assert job[name].endswith("Z"), (name, job[name])
    assert moment(job["next_attempt_at"]) >= moment(job["created_at"])
    assert moment(job["updated_at"]) >= moment(job["created_at"])


def test_a_delivered_job_shows_its_attempts_and_completion_and_nothing_due(client, worker):
    job_id = create(client)
    worker.deliver_after_failures(job_id, 2)

    job = get(client, job_id)

    assert (job["status"], job["attempts"], job["last_error"]) == ("SUCCESS", 3, None)
    assert job["next_attempt_at"] is None
    assert moment(job["completed_at"]) >= moment(job["created_at"])


def test_a_failed_job_shows_its_last_error(client, worker):
    job_id = create(client)
    worker.fail_for_good(job_id)

    job = get(client, job_id)

    assert (job["status"], job["attempts"]) == ("FAILED", 1)
    assert job["last_error"] == "550 mailbox unavailable"
    assert job["completed_at"] is not None and job["next_attempt_at"] is None


def test_a_job_waiting_to_retry_shows_when_its_next_attempt_is_due(client, worker):
    job_id = create(client)
    worker.retry_later(job_id, worker.claim(job_id), due_in=60, error="connection refused")

    job = get(client, job_id)

    assert (job["status"], job["attempts"], job["last_error"]) == ("RETRY", 1, "connection refused")
    assert moment(job["next_attempt_at"]) > utcnow() + timedelta(seconds=50)


# --- GET /api/notifications/{job_id}/attempts ----------------------------------------------------------------------


def test_a_new_job_has_no_attempts(client):
    job_id = create(client)

    result = client.simulate_get(f"/api/notifications/{job_id}/attempts")

    assert result.status_code == 200
    assert result.json == {"job_id": job_id, "attempts": []}


def test_the_attempts_of_an_unknown_job_are_not_found(client):
    assert_error(client.simulate_get(f"/api/notifications/{uuid.uuid4()}/attempts"), 404, "not_found")


def test_attempts_are_listed_oldest_first_with_their_outcomes_and_the_running_one_has_none(client, worker):
    job_id = create(client)
    worker.retry_later(job_id, worker.claim(job_id), error="503 from receiver")
    worker.claim(job_id)

    attempts = client.simulate_get(f"/api/notifications/{job_id}/attempts").json["attempts"]

    assert [a["number"] for a in attempts] == [1, 2]
    first, running = attempts
    assert set(first) == {"number", "started_at", "finished_at", "outcome", "error", "worker"}
    assert (first["outcome"], first["error"], first["worker"]) == ("transient_error", "503 from receiver", "test")
    assert moment(first["finished_at"]) >= moment(first["started_at"])
    assert (running["outcome"], running["finished_at"], running["error"]) == (None, None, None)
    assert running["worker"] == "test"


# --- DELETE /api/notifications/{job_id} ----------------------------------------------------------------------------


def test_cancelling_a_pending_job_answers_200_cancelled_and_it_stays_cancelled(client, database):
    job_id = create(client)

    result = client.simulate_delete(f"/api/notifications/{job_id}")

    assert result.status_code == 200, result.text
    assert result.json["job_id"] == job_id
    assert result.json["status"] == "CANCELLED"
    assert get(client, job_id)["status"] == "CANCELLED"
    # It is never delivered: its message can no longer claim it
    claimed = database.run(lambda conn: claims.claim(conn, uuid.UUID(job_id), 1, now=utcnow(), worker="w"))
    assert claimed is None


def test_cancelling_a_job_waiting_to_retry_is_allowed(client, worker):
    job_id = create(client)
    worker.retry_later(job_id, worker.claim(job_id), due_in=60)

    result = client.simulate_delete(f"/api/notifications/{job_id}")

    assert result.status_code == 200
    assert result.json["status"] == "CANCELLED"


def test_cancelling_a_cancelled_job_again_is_a_409_not_cancellable(client):
    job_id = create(client)
    client.simulate_delete(f"/api/notifications/{job_id}")

    assert_error(client.simulate_delete(f"/api/notifications/{job_id}"), 409, "not_cancellable")


def test_cancelling_an_unknown_job_is_a_404(client):
    assert_error(client.simulate_delete(f"/api/notifications/{uuid.uuid4()}"), 404, "not_found")


@pytest.mark.parametrize("state", ["PROCESSING", "SUCCESS", "FAILED"])
def test_a_job_held_by_a_worker_or_finished_cannot_be_cancelled(client, worker, state):
    job_id = create(client)
    attempt = worker.claim(job_id)
    if state == "SUCCESS":
        worker.succeed(job_id, attempt)
    elif state == "FAILED":
        worker.fail(job_id, attempt)

    error = assert_error(client.simulate_delete(f"/api/notifications/{job_id}"), 409, "not_cancellable")

    assert state in error["message"]
    assert get(client, job_id)["status"] == state


# --- GET /internal/queue/stats -------------------------------------------------------------------------------------


def stats(client: testing.TestClient) -> dict:
    result = client.simulate_get("/internal/queue/stats")
    assert result.status_code == 200, result.text
    assert set(result.json) >= STATS_KEYS
    return result.json


def assert_stats_match_the_ledger(client: testing.TestClient, database: Database) -> dict:
    answer = stats(client)
    for status, count in ledger_counts(database).items():
        assert answer[status.value.lower()] == count, (status, answer)
    return answer


def test_the_stats_of_an_empty_ledger_are_all_zero(client, database):
    answer = assert_stats_match_the_ledger(client, database)

    assert {key: answer[key] for key in STATS_KEYS} == dict.fromkeys(STATS_KEYS, 0)
    assert answer["avg_attempts_success"] == 0


def test_the_stats_equal_a_count_by_status_over_the_ledger_after_a_mix_of_jobs(client, database, worker):
    pending = [create(client) for _ in range(3)]
    assert client.simulate_delete(f"/api/notifications/{pending.pop()}").status_code == 200
    worker.claim(create(client))  # processing
    worker.deliver_after_failures(create(client), 0)  # success after 1 attempt
    worker.deliver_after_failures(create(client), 2)  # success after 3 attempts
    worker.fail_for_good(create(client))
    retrying = create(client)
    worker.retry_later(retrying, worker.claim(retrying), due_in=60)

    answer = assert_stats_match_the_ledger(client, database)

    assert (answer["pending"], answer["retry"], answer["processing"]) == (2, 1, 1)
    assert (answer["success"], answer["failed"]) == (2, 1)
    assert answer["avg_attempts_success"] == 2.0
    assert answer["cancelled"] == 1


def test_the_stats_follow_a_manual_retry_of_a_failed_job(client, database, worker):
    job_id = create(client)
    worker.fail_for_good(job_id)
    assert stats(client)["failed"] == 1

    assert client.simulate_post(f"/internal/notifications/{job_id}/retry").status_code == 202

    answer = assert_stats_match_the_ledger(client, database)
    assert (answer["failed"], answer["pending"]) == (0, 1)


def test_the_average_attempts_of_successes_ignores_failed_jobs(client, database, worker):
    worker.deliver_after_failures(create(client), 1)
    worker.fail_for_good(create(client))

    assert assert_stats_match_the_ledger(client, database)["avg_attempts_success"] == 2.0


# --- POST /internal/notifications/{job_id}/retry -------------------------------------------------------------------


def test_a_manual_retry_of_a_failed_job_gives_it_a_fresh_budget_keeps_its_history_and_dispatches_it(
    make_client, database, redis_messages
):
    client = make_client(WJP_MAX_ATTEMPTS="3")
    worker = Worker(database)
    job_id = create(client)
    worker.fail(job_id, worker.claim(job_id), error="first failure")

    result = client.simulate_post(f"/internal/notifications/{job_id}/retry")

    assert result.status_code == 202, result.text
    assert result.json["job_id"] == job_id
    assert result.json["status"] == "PENDING"
    assert (result.json["attempts"], result.json["max_attempts"]) == (1, 1 + 3)
    assert result.json["completed_at"] is None
    job = get(client, job_id)
    assert (job["status"], job["attempts"], job["max_attempts"]) == ("PENDING", 1, 4)
    # The history is kept
    history = client.simulate_get(f"/api/notifications/{job_id}/attempts").json["attempts"]
    assert [(a["number"], a["outcome"], a["error"]) for a in history] == [(1, "permanent_error", "first failure")]
    # A new message, under the job's new dispatch
    message = redis_messages.queued()[f"{job_id}.2"]
    assert message["args"] == [job_id]
    assert message["options"]["wjp_rid"] == f"{job_id}.2"

    # Attempt numbers keep counting: the retried job is claimed by its new message as attempt 2
    worker.seq[uuid.UUID(job_id)] = 2
    worker.fail(job_id, worker.claim(job_id), error="second failure")
    again = client.simulate_post(f"/internal/notifications/{job_id}/retry")
    assert again.status_code == 202
    assert (again.json["attempts"], again.json["max_attempts"]) == (2, 2 + 3)
    assert f"{job_id}.3" in redis_messages.queued()
    history = client.simulate_get(f"/api/notifications/{job_id}/attempts").json["attempts"]
    assert [a["number"] for a in history] == [1, 2]


@pytest.mark.parametrize("state", ["PENDING", "RETRY", "PROCESSING", "SUCCESS", "CANCELLED"])
def test_a_manual_retry_of_a_job_that_has_not_failed_is_a_409_not_failed(client, worker, redis_messages, state):
    job_id = create(client)
    if state == "CANCELLED":
        client.simulate_delete(f"/api/notifications/{job_id}")
    elif state != "PENDING":
        attempt = worker.claim(job_id)
        if state == "RETRY":
            worker.retry_later(job_id, attempt, due_in=60)
        elif state == "SUCCESS":
            worker.succeed(job_id, attempt)
    messages_before = set(redis_messages.queued()) | set(redis_messages.delayed())

    error = assert_error(client.simulate_post(f"/internal/notifications/{job_id}/retry"), 409, "not_failed")

    assert state in error["message"]
    assert get(client, job_id)["status"] == state
    assert set(redis_messages.queued()) | set(redis_messages.delayed()) == messages_before


# Named ids: pytest-xdist needs every worker to collect the same test names, and a random uuid's differs.
@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid"], ids=["unknown-uuid", "not-a-uuid"])
def test_a_manual_retry_of_an_unknown_job_is_a_404(client, job_id):
    assert_error(client.simulate_post(f"/internal/notifications/{job_id}/retry"), 404, "not_found")


# --- The admin token -----------------------------------------------------------------------------------------------


@pytest.fixture
def guarded(make_client) -> testing.TestClient:
    return make_client(WJP_ADMIN_TOKEN="s3cret")


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer wrong", "Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret"],
    ids=["none", "empty", "scheme only", "empty token", "wrong", "prefix", "longer", "basic", "no scheme"],
)
def test_operator_endpoints_without_the_right_bearer_token_are_401_with_the_json_error(guarded, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}

    assert_error(guarded.simulate_get("/internal/queue/stats", headers=headers), 401, "unauthorized")
    retry = guarded.simulate_post(f"/internal/notifications/{uuid.uuid4()}/retry", headers=headers)
    assert_error(retry, 401, "unauthorized")


def test_operator_endpoints_with_the_admin_token_answer(guarded):
    answer = guarded.simulate_get("/internal/queue/stats", headers={"Authorization": "Bearer s3cret"})

    assert answer.status_code == 200
    assert set(answer.json) >= STATS_KEYS
    retry = guarded.simulate_post(
        f"/internal/notifications/{uuid.uuid4()}/retry", headers={"Authorization": "Bearer s3cret"}
    )
    assert_error(retry, 404, "not_found")


def test_the_bearer_scheme_is_case_insensitive(guarded):
    assert guarded.simulate_get("/internal/queue/stats", headers={"Authorization": "bearer s3cret"}).status_code == 200


def test_the_admin_token_does_not_guard_the_producer_api_or_the_public_endpoints(guarded):
    job_id = create(guarded)

    assert guarded.simulate_get(f"/api/notifications/{job_id}").status_code == 200
    assert guarded.simulate_get(f"/api/notifications/{job_id}/attempts").status_code == 200
    assert guarded.simulate_delete(f"/api/notifications/{job_id}").status_code == 200
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert guarded.simulate_get(path).status_code == 200, path


def test_without_an_admin_token_the_operator_endpoints_are_open(client):
    assert client.simulate_get("/internal/queue/stats").status_code == 200


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "//internal/queue/stats"),
        ("GET", "///internal/queue/stats"),
        ("GET", "/internal//queue/stats"),
        ("GET", "/%69nternal/queue/stats"),
        ("GET", "/internal/queue/stats/"),
        ("POST", "//internal/notifications/{id}/retry"),
    ],
)
def test_a_variant_spelling_of_an_operator_path_does_not_get_past_the_admin_token(guarded, worker, method, path):
    # Given a FAILED job an attacker would like to re-send
    job_id = create(guarded)
    worker.fail_for_good(job_id)

    # When the path is spelled so that the router still finds the operator endpoint
    result = guarded.simulate_request(method, path.replace("{id}", job_id))

    # Then the token is still required (or the path is not served at all)
    assert result.status_code in (401, 404), (path, result.status_code, result.text)
    assert get(guarded, job_id)["status"] == "FAILED"
