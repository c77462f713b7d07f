"""Many producers racing on one idempotency key: exactly one row, one 202, the same job id for all, no 5xx.

The requests go through the app factory's ASGI app from real threads, each on an event loop of its own, so they
race on the real database's unique constraint exactly as the API's processes would."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import falcon
import falcon.asgi
import pytest
from falcon import testing

from actors.broker import Dispatcher
from ledger import intake
from ledger.database import Database
from ledger.states import Status
from tests.service.conftest import RedisMessages, job_count, ledger_counts, notification, simulate_on_own_loop


def race(app: falcon.asgi.App, bodies: list[dict[str, Any]]) -> list[testing.Result]:
    """POST every body at once, one thread each, released together by a barrier."""
    barrier = threading.Barrier(len(bodies))

    def send(body: dict[str, Any]) -> testing.Result:
        barrier.wait(timeout=30)
        return simulate_on_own_loop(app, "POST", "/api/notifications", json=body)

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(send, bodies))


def race_in_one_process(app: falcon.asgi.App, bodies: list[dict[str, Any]]) -> list[testing.Result]:
    """POST every body at once on one event loop, as the requests one API process reads at the same moment."""

    async def send_all() -> list[testing.Result]:
        async with testing.ASGIConductor(app) as conductor:
            posts = [conductor.simulate_post("/api/notifications", json=body) for body in bodies]
            return list(await asyncio.gather(*posts))

    return asyncio.run(send_all())


def assert_exactly_one_job(results: list[testing.Result], messages: RedisMessages) -> str:
    statuses = Counter(result.status_code for result in results)
    assert statuses == {202: 1, 200: len(results) - 1}, [
        (r.status_code, r.text) for r in results if r.status_code >= 300
    ]
    job_ids = {result.json["job_id"] for result in results}
    assert len(job_ids) == 1
    (job_id,) = job_ids
    assert all(r.headers.get("idempotent-replayed") == "true" for r in results if r.status_code == 200)
    assert f"{job_id}.1" in messages.queued()
    return job_id


@pytest.fixture
def app_on(client_for) -> Any:
    def build(database: Database, dispatcher: Dispatcher) -> falcon.asgi.App:
        return client_for(database, dispatcher).app

    return build


def test_fifty_concurrent_requests_with_one_new_key_on_postgresql_make_exactly_one_job(
    app_on, postgres_db, dispatcher, redis_messages
):
    app = app_on(postgres_db, dispatcher)
    for round_number in range(3):
        # Given a key nobody has used yet
        body = notification(idempotency_key=f"race-{round_number}")

        # When many producers send it at the same moment
        results = race(app, [body] * 50)

        # Then one of them created the job and all the others were told about that same job
        assert_exactly_one_job(results, redis_messages)
        assert job_count(postgres_db) == round_number + 1
    assert len(redis_messages.queued()) == 3
    assert ledger_counts(postgres_db)[Status.PENDING] == 3


def test_twenty_concurrent_requests_with_one_new_key_on_sqlite_make_exactly_one_job(
    app_on, sqlite_db, dispatcher, redis_messages
):
    app = app_on(sqlite_db, dispatcher)
    for round_number in range(3):
        body = notification(idempotency_key=f"race-{round_number}")

        results = race(app, [body] * 20)

        assert_exactly_one_job(results, redis_messages)
        assert job_count(sqlite_db) == round_number + 1
    assert len(redis_messages.queued()) == 3


@pytest.mark.parametrize("ledger", ["postgres_db", "sqlite_db"])
def test_concurrent_requests_with_one_key_and_two_payloads_record_one_and_refuse_the_other(
    app_on, dispatcher, redis_messages, request, ledger
):
    database = request.getfixturevalue(ledger)
    app = app_on(database, dispatcher)
    first = notification(idempotency_key="contested", message="first")
    second = {**first, "message": "second"}
    bodies = [first, second] * 10

    results = race(app, bodies)

    assert all(r.status_code in (200, 202, 422) for r in results), [(r.status_code, r.text) for r in results]
    assert job_count(database) == 1
    (winner,) = [body for body, r in zip(bodies, results, strict=True) if r.status_code == 202]
    for body, result in zip(bodies, results, strict=True):
        # The same payload as the recorded one is a replay; the other is a mismatch
        expected = (200, 202) if body["message"] == winner["message"] else (422,)
        assert result.status_code in expected, (body["message"], winner["message"], result.status_code)
    assert len(redis_messages.queued()) == 1


def test_concurrent_requests_with_different_keys_each_make_their_own_job(
    app_on, postgres_db, dispatcher, redis_messages
):
    app = app_on(postgres_db, dispatcher)
    bodies = [notification() for _ in range(30)]

    results = race(app, bodies)

    assert [r.status_code for r in results] == [202] * 30
    assert len({r.json["job_id"] for r in results}) == 30
    assert job_count(postgres_db) == 30
    assert len(redis_messages.queued()) == 30


def test_concurrent_requests_share_the_ledger_statement_and_each_gets_its_own_answer(
    app_on, postgres_db, dispatcher, redis_messages, monkeypatch
):
    groups: list[int] = []
    accept_many = intake.accept_many

    def slow_accept_many(conn, group):
        groups.append(len(group))
        time.sleep(0.05)  # a statement in the database, during which other requests queue up
        return accept_many(conn, group)

    monkeypatch.setattr(intake, "accept_many", slow_accept_many)
    app = app_on(postgres_db, dispatcher)
    bodies = [notification() for _ in range(20)] + [notification(idempotency_key="twice")] * 2

    results = race_in_one_process(app, bodies)

    assert sum(groups) == 22 and max(groups) > 1, groups
    assert sorted(r.status_code for r in results) == [200] + [202] * 21
    assert [r.json["idempotency_key"] for r in results] == [b["idempotency_key"] for b in bodies]
    assert len({r.json["job_id"] for r in results}) == 21
    assert job_count(postgres_db) == 21
    # Every new job's message was sent before its 202.
    assert redis_messages.queued().keys() >= {f"{r.json['job_id']}.1" for r in results}


def test_a_group_the_ledger_refuses_as_a_whole_is_accepted_request_by_request(
    app_on, postgres_db, dispatcher, redis_messages, monkeypatch
):
    def refusing(conn, group):
        time.sleep(0.05)
        raise ValueError("one value of the group does not fit its column")

    monkeypatch.setattr(intake, "accept_many", refusing)
    app = app_on(postgres_db, dispatcher)

    results = race_in_one_process(app, [notification() for _ in range(10)])

    assert [r.status_code for r in results] == [202] * 10
    assert job_count(postgres_db) == 10
    assert len(redis_messages.queued()) == 10
