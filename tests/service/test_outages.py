"""The API when a server is down: without Redis, intake still records the job (the reconciler sends it later);
without the ledger, every request that needs it is a clean 503 with Retry-After and nothing is half-written."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from actors.broker import Dispatcher, make_broker
from ledger.database import Database
from ledger.states import Status
from tests.conftest import free_port
from tests.service.conftest import Worker, assert_error, ledger_counts, notification, post


@pytest.fixture
def redis_down(queue_name: str) -> Dispatcher:
    return Dispatcher(make_broker(f"redis://127.0.0.1:{free_port()}/0"), queue_name)


def test_with_redis_down_a_new_notification_is_still_accepted_and_recorded_as_pending(client_for, database, redis_down):
    client = client_for(database, redis_down)

    result = post(client, notification())

    assert result.status_code == 202, result.text
    job_id = result.json["job_id"]
    assert result.json["status"] == "PENDING"
    got = client.simulate_get(f"/api/notifications/{job_id}")
    assert got.status_code == 200
    assert got.json["status"] == "PENDING"
    assert ledger_counts(database)[Status.PENDING] == 1


def test_with_redis_down_a_replay_and_a_cancel_work_as_usual(client_for, database, redis_down):
    client = client_for(database, redis_down)
    body = notification()
    job_id = post(client, body).json["job_id"]

    again = post(client, body)

    assert (again.status_code, again.json["job_id"]) == (200, job_id)
    assert client.simulate_delete(f"/api/notifications/{job_id}").status_code == 200


def test_with_redis_down_a_manual_retry_is_still_recorded(client_for, database, redis_down):
    client = client_for(database, redis_down)
    job_id = post(client, notification()).json["job_id"]
    worker = Worker(database)
    worker.fail(job_id, worker.claim(job_id))

    result = client.simulate_post(f"/internal/notifications/{job_id}/retry")

    assert result.status_code == 202, result.text
    assert client.simulate_get(f"/api/notifications/{job_id}").json["status"] == "PENDING"


def unreachable_postgres() -> Database:
    return Database(f"postgresql://postgres@127.0.0.1:{free_port()}/x")


def unopenable_sqlite(directory: Path) -> Database:
    # A directory where the database file should be: SQLite cannot open it.
    target = directory / "ledger.sqlite3"
    target.mkdir()
    return Database(f"sqlite:///{target}")


@pytest.fixture(params=["postgresql", "sqlite"])
def ledger_down(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    return unreachable_postgres() if request.param == "postgresql" else unopenable_sqlite(tmp_path)


def assert_ledger_unavailable(result) -> None:
    assert_error(result, 503, "ledger_unavailable")
    retry_after = result.headers.get("retry-after")
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) > 0


def test_with_the_ledger_down_intake_is_a_503_with_retry_after_and_nothing_is_sent(
    client_for, ledger_down, dispatcher, redis_messages
):
    client = client_for(ledger_down, dispatcher)

    assert_ledger_unavailable(post(client, notification()))

    assert redis_messages.queued() == {}
    assert redis_messages.delayed() == {}


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/api/notifications/{id}"),
        ("GET", "/api/notifications/{id}/attempts"),
        ("DELETE", "/api/notifications/{id}"),
        ("GET", "/internal/queue/stats"),
        ("POST", "/internal/notifications/{id}/retry"),
    ],
)
def test_with_the_ledger_down_every_ledger_read_and_write_is_a_503(client_for, ledger_down, dispatcher, method, path):
    client = client_for(ledger_down, dispatcher)

    assert_ledger_unavailable(client.simulate_request(method, path.replace("{id}", str(uuid.uuid4()))))


def test_with_the_ledger_down_a_bad_request_is_still_answered_as_a_bad_request(client_for, ledger_down, dispatcher):
    client = client_for(ledger_down, dispatcher)

    assert_error(post(client, notification(channel="pigeon")), 400, "validation_error")
    assert_error(post(client, "{"), 400, "invalid_json")


def test_with_the_ledger_down_liveness_is_unaffected(client_for, ledger_down, dispatcher):
    assert client_for(ledger_down, dispatcher).simulate_get("/healthz").status_code == 200
