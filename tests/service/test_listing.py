"""GET /api/notifications: a producer's jobs newest first as GET bodies, every filter, walks by `next_cursor` that
return each job once while new ones arrive, scoping by API key, and a 400 naming each bad parameter."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from falcon import testing

from ledger import api_keys
from ledger.database import Database
from ledger.timestamps import utcnow
from tests.service.conftest import Worker, assert_error, notification, post
from tests.service.test_openapi import response_schema, validate


def listing(client: testing.TestClient, headers: dict[str, str] | None = None, **params: Any) -> dict[str, Any]:
    result = client.simulate_get("/api/notifications", params=params, headers=headers)
    assert result.status_code == 200, result.text
    return result.json


def submit(client: testing.TestClient, headers: dict[str, str] | None = None, **fields: Any) -> str:
    result = post(client, notification(**fields), **(headers or {}))
    assert result.status_code == 202, result.text
    return result.json["job_id"]


def walk(client: testing.TestClient, headers: dict[str, str] | None = None, **params: Any) -> list[str]:
    """Every job id of a walk, following `next_cursor` with the cursor alone."""
    page = listing(client, headers, **params)
    found = [job["job_id"] for job in page["data"]]
    while page["next_cursor"] is not None:
        page = listing(client, headers, cursor=page["next_cursor"], limit=params.get("limit", 50))
        found += [job["job_id"] for job in page["data"]]
    return found


def test_the_listing_shows_each_job_as_its_get_body_newest_first(client):
    ids = [submit(client, message=f"number {i}") for i in range(3)]

    page = listing(client)

    assert page["next_cursor"] is None
    assert [job["job_id"] for job in page["data"]] == ids[::-1]
    assert page["data"] == [client.simulate_get(f"/api/notifications/{i}").json for i in ids[::-1]]


def test_a_page_fits_the_documented_schema(client):
    for _ in range(3):
        submit(client, subject="S", metadata={"k": [1]})
    document = client.simulate_get("/openapi.json").json

    for page in (listing(client, limit=2), listing(client, limit=2, cursor=listing(client, limit=2)["next_cursor"])):
        validate(document, response_schema(document, "/api/notifications", "get", 200), page)


def test_following_next_cursor_returns_every_job_of_the_walk_once_while_new_jobs_arrive(client):
    ids = [submit(client) for _ in range(7)]
    page = listing(client, limit=2)
    found = [job["job_id"] for job in page["data"]]
    arrived = []
    while page["next_cursor"] is not None:
        arrived.append(submit(client))
        # Once with the filters repeated (here: none), once with the cursor alone.
        page = listing(client, limit=2, cursor=page["next_cursor"])
        found += [job["job_id"] for job in page["data"]]

    assert found == ids[::-1]
    assert walk(client, limit=3) == (ids + arrived)[::-1]


def test_the_default_page_holds_50_jobs_and_a_page_at_most_500(client):
    ids = [submit(client) for _ in range(51)]

    first = listing(client)
    assert len(first["data"]) == 50 and first["next_cursor"] is not None
    assert [job["job_id"] for job in listing(client, cursor=first["next_cursor"])["data"]] == ids[:1]
    assert len(listing(client, limit=500)["data"]) == 51


def test_each_filter_narrows_the_listing(client, database: Database):
    worker = Worker(database)
    mail = submit(client, channel="email")
    log = submit(client, channel="log", recipient="ops")
    done, failed = submit(client), submit(client)
    worker.succeed(done, worker.claim(done))
    worker.fail_for_good(failed)
    moment = listing(client)["data"][0]["created_at"]  # the newest job's
    last = submit(client, channel="log", recipient="ops")
    log_destination = listing(client, channel="log")["data"][0]["destination"]

    assert walk(client, status="PENDING") == [last, log, mail]
    assert walk(client, status=["SUCCESS", "FAILED"]) == [failed, done]
    assert walk(client, status=["SUCCESS", "FAILED"], limit=1) == [failed, done]
    assert walk(client, channel="log") == [last, log]
    assert walk(client, channel="email", status="PENDING") == [mail]
    assert walk(client, destination=log_destination) == [last, log]
    assert walk(client, destination="webhook:nowhere.example:443") == []
    assert walk(client, created_after=moment) == [last, failed]
    assert walk(client, created_before=moment) == [done, log, mail]
    assert walk(client, created_after=moment.replace("Z", "+00:00"), created_before=moment) == []


@pytest.fixture
def keys(database: Database) -> tuple[dict[str, str], dict[str, str]]:
    made = [database.run(lambda conn, n=n: api_keys.create(conn, n, now=utcnow()), transaction=True)[1] for n in "ab"]
    return {"Authorization": f"Bearer {made[0]}"}, {"Authorization": f"Bearer {made[1]}"}


def test_a_key_lists_only_its_own_jobs_and_a_cursor_serves_only_the_key_it_was_issued_to(client, keys):
    alpha, beta = keys
    theirs = [submit(client, alpha) for _ in range(3)]
    ours = [submit(client, beta) for _ in range(2)]

    assert walk(client, alpha, limit=1) == theirs[::-1]
    assert walk(client, beta, limit=1) == ours[::-1]
    assert_error(client.simulate_get("/api/notifications"), 401, "unauthorized")
    cursor = listing(client, alpha, limit=1)["next_cursor"]
    refused = assert_error(client.simulate_get("/api/notifications", params={"cursor": cursor}, headers=beta), 400,
                           "validation_error")  # fmt: skip
    assert [d["parameter"] for d in refused["details"]] == ["cursor"]


def cursor_of(document: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


def tampered(cursor: str, **changes: Any) -> str:
    document = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    return cursor_of({**document, **changes})


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"status": "DELIVERED"}, ["status"]),
        ({"status": ["PENDING", "pending"]}, ["status"]),
        ({"status": "PENDING,FAILED"}, ["status"]),
        ({"channel": "pigeon"}, ["channel"]),
        ({"channel": ["email", "log"]}, ["channel"]),
        ({"destination": "x" * 301}, ["destination"]),
        ({"destination": "webhook:a\x00b:443"}, ["destination"]),
        ({"created_after": "yesterday"}, ["created_after"]),
        ({"created_before": "2026-01-31T09:00:00"}, ["created_before"]),
        ({"created_before": "2026-01-31"}, ["created_before"]),
        ({"limit": "0"}, ["limit"]),
        ({"limit": "501"}, ["limit"]),
        ({"limit": "ten"}, ["limit"]),
        ({"limit": "-1"}, ["limit"]),
        ({"cursor": "not a cursor"}, ["cursor"]),
        ({"cursor": cursor_of({"v": 1})}, ["cursor"]),
        ({"cursor": cursor_of([1, 2])}, ["cursor"]),
        ({"statuses": "FAILED"}, ["statuses"]),
        ({"status": "NOPE", "limit": "0", "sort": "asc"}, ["sort", "status", "limit"]),
    ],
)
def test_a_bad_parameter_gets_a_400_naming_it(client, params, named):
    body = assert_error(client.simulate_get("/api/notifications", params=params), 400, "validation_error")
    assert [d["parameter"] for d in body["details"]] == named


@pytest.mark.parametrize(
    "changes",
    [
        {"h": "1:0:"},
        {"h": "x"},
        {"h": 5},
        {"p": ["2030-01-01T00:00:00Z", "not-a-uuid"]},
        {"p": ["2030-01-01T00:00:00", "0" * 32]},
        {"p": "2030"},
        {"f": {"status": ["GONE"], "channel": None, "destination": None, "created_after": None,
               "created_before": None}},
        {"f": {"status": "PENDING"}},
        {"v": 2},
        {"s": 7},
    ],
)  # fmt: skip
def test_a_tampered_cursor_gets_a_400_naming_the_cursor(client, changes):
    submit(client)
    submit(client)
    cursor = tampered(listing(client, limit=1)["next_cursor"], **changes)

    body = assert_error(client.simulate_get("/api/notifications", params={"cursor": cursor}), 400, "validation_error")
    assert [d["parameter"] for d in body["details"]] == ["cursor"]


def test_a_cursor_given_with_other_filters_than_its_walks_gets_a_400(client):
    for _ in range(3):
        submit(client)
    cursor = listing(client, limit=1, status="PENDING")["next_cursor"]

    assert len(listing(client, limit=1, status="PENDING", cursor=cursor)["data"]) == 1
    for other in ({"status": "FAILED"}, {"channel": "log"}, {"status": ["PENDING", "FAILED"]}):
        body = assert_error(
            client.simulate_get("/api/notifications", params={"cursor": cursor, **other}), 400, "validation_error"
        )
        assert [d["parameter"] for d in body["details"]] == ["cursor"]
