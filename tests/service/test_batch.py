"""POST /api/notifications/batch in one API process on the real ledgers and Redis: one result per item in order,
each item answered as its own single POST would be (replays and mismatches inside the batch too), and the batch
itself refused with 400/413 when it is not one."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from falcon import testing

from ledger.states import Status
from ledger.timestamps import rfc3339, utcnow
from tests.service.conftest import ABSENT, assert_error, job_count, ledger_counts, notification, post
from tests.service.test_openapi import validate

ACCEPTED_KEYS = {"status", "job_id", "job_status", "idempotency_key", "created_at"}


def post_batch(client: testing.TestClient, items: Any, **headers: str) -> testing.Result:
    """POST `{"notifications": items}` to the batch endpoint (or `items` as it is, when it is bytes or a str)."""
    headers.setdefault("Content-Type", "application/json")
    body = items if isinstance(items, bytes | str) else json.dumps({"notifications": items}, ensure_ascii=False)
    return client.simulate_post("/api/notifications/batch", body=body, headers=headers)


def results_of(result: testing.Result) -> list[dict[str, Any]]:
    assert result.status_code == 200, result.text
    assert set(result.json) == {"results"}
    return result.json["results"]


def assert_item_error(item: dict[str, Any], status: int, code: str) -> None:
    assert set(item) == {"status", "error", "message", "details"}, item
    assert (item["status"], item["error"]) == (status, code), item
    assert item["message"].strip() and isinstance(item["details"], list)


def test_every_item_of_a_batch_is_accepted_with_its_own_result_in_order(client, database, redis_messages):
    items = [notification() for _ in range(5)]

    results = results_of(post_batch(client, items))

    assert [r["status"] for r in results] == [202] * 5
    assert all(set(r) == ACCEPTED_KEYS and r["job_status"] == "PENDING" for r in results)
    assert [r["idempotency_key"] for r in results] == [item["idempotency_key"] for item in items]
    for item, result in zip(items, results, strict=True):
        job = client.simulate_get(f"/api/notifications/{result['job_id']}").json
        assert (job["recipient"], job["idempotency_key"], job["created_at"]) == (
            item["recipient"],
            item["idempotency_key"],
            result["created_at"],
        )
    assert ledger_counts(database)[Status.PENDING] == 5
    assert redis_messages.queued().keys() == {f"{r['job_id']}.1" for r in results}


def test_a_bad_item_gets_the_single_posts_error_and_does_not_stop_the_others(client, database):
    items = [
        notification(),
        notification(channel="pigeon", message=""),
        notification(idempotency_key=ABSENT),
        "not an object",
        notification(send_at="tomorrow"),
        notification(),
    ]

    results = results_of(post_batch(client, items))

    assert [r["status"] for r in results] == [202, 400, 400, 400, 400, 202]
    assert_item_error(results[1], 400, "validation_error")
    problems = {d["field"]: d["message"] for d in results[1]["details"]}
    assert problems.keys() == {"channel", "message"} and "email" in problems["channel"]
    assert_item_error(results[2], 400, "idempotency_key_required")
    assert_item_error(results[3], 400, "validation_error")
    assert results[4]["details"] == [{"field": "send_at", "message": results[4]["details"][0]["message"]}]
    assert job_count(database) == 2


def test_a_key_known_before_the_batch_is_a_replay_or_a_mismatch(client, database):
    recorded = notification(message="recorded")
    job_id = post(client, recorded).json["job_id"]

    results = results_of(post_batch(client, [recorded, {**recorded, "message": "changed"}]))

    assert [r["status"] for r in results] == [200, 422]
    assert (results[0]["job_id"], results[0]["job_status"]) == (job_id, "PENDING")
    assert_item_error(results[1], 422, "idempotency_key_mismatch")
    assert results[1]["details"] == [{"field": "idempotency_key", "job_id": job_id}]
    assert job_count(database) == 1


def test_each_result_carries_its_own_jobs_created_at_when_replays_and_new_items_share_a_batch(client):
    # A batch renders each instant once; replays of jobs recorded at other instants must still get their own.
    earlier = [notification(), notification()]
    recorded = [post(client, item).json for item in earlier]
    fresh = [notification(), notification()]

    results = results_of(post_batch(client, [fresh[0], earlier[0], fresh[1], earlier[1]]))

    assert [r["status"] for r in results] == [202, 200, 202, 200]
    assert [results[1]["created_at"], results[3]["created_at"]] == [job["created_at"] for job in recorded]
    assert results[0]["created_at"] == results[2]["created_at"] not in {job["created_at"] for job in recorded}
    for result in results:
        job = client.simulate_get(f"/api/notifications/{result['job_id']}").json
        assert job["created_at"] == result["created_at"]


def test_a_key_twice_in_one_batch_is_answered_as_if_the_items_came_one_after_the_other(
    client, database, redis_messages
):
    first = notification(metadata={"a": 1, "b": 2})
    items = [first, {**first, "metadata": {"b": 2, "a": 1}}, {**first, "message": "changed"}]

    results = results_of(post_batch(client, items))

    assert [r["status"] for r in results] == [202, 200, 422]
    assert results[0]["job_id"] == results[1]["job_id"] == results[2]["details"][0]["job_id"]
    assert job_count(database) == 1
    assert len(redis_messages.queued()) == 1


def test_a_batch_of_a_thousand_notifications_is_accepted_whole(client, database, redis_messages):
    results = results_of(post_batch(client, [notification() for _ in range(1000)]))

    assert [r["status"] for r in results] == [202] * 1000
    assert job_count(database) == 1000
    assert len(redis_messages.queued()) == 1000


def test_a_scheduled_item_is_recorded_and_waits_like_a_single_post(client, redis_messages):
    an_hour_ahead = rfc3339(utcnow() + timedelta(hours=1))
    results = results_of(post_batch(client, [notification(send_at=an_hour_ahead), notification()]))

    assert [r["status"] for r in results] == [202, 202]
    assert redis_messages.queued().keys() == {f"{results[1]['job_id']}.1"}
    assert redis_messages.delayed() == {}


def test_an_idempotency_key_header_on_the_batch_does_not_stand_for_its_items_keys(client, database):
    results = results_of(post_batch(client, [notification(idempotency_key=ABSENT)], **{"Idempotency-Key": "k"}))

    assert_item_error(results[0], 400, "idempotency_key_required")
    assert job_count(database) == 0


def test_more_than_a_thousand_items_are_refused_whole_with_413_batch_too_large(client, database):
    assert_error(post_batch(client, [notification() for _ in range(1001)]), 413, "batch_too_large")
    assert job_count(database) == 0


def test_a_body_over_4_mib_is_refused_with_413_payload_too_large(client, database):
    # Under 64 KiB per item, as a single POST allows, but over 4 MiB in all.
    items = [notification(message="x" * 16_000) for _ in range(270)]
    assert len(json.dumps({"notifications": items})) > 4 * 1024 * 1024

    assert_error(post_batch(client, items), 413, "payload_too_large")
    assert job_count(database) == 0


def test_a_body_of_nearly_4_mib_is_accepted(client, database):
    items = [notification(message="x" * 16_000) for _ in range(250)]
    assert len(json.dumps({"notifications": items})) > 64 * 1024

    assert [r["status"] for r in results_of(post_batch(client, items))] == [202] * 250


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"notifications": None},
        {"notifications": {"recipient": "user@example.com"}},
        {"notifications": "[]"},
        {"notifications": []},
        {"notifications": [{}], "extra": 1},
        [{"recipient": "user@example.com"}],
    ],
    ids=["missing", "null", "an object", "a string", "empty", "an unknown field", "a bare array"],
)
def test_a_body_without_a_notifications_array_of_one_or_more_items_is_refused_with_400(client, database, body):
    error = assert_error(post_batch(client, json.dumps(body)), 400, "validation_error")

    assert error["details"]
    assert job_count(database) == 0


def test_malformed_json_and_a_wrong_content_type_are_refused_like_a_single_post(client):
    assert_error(post_batch(client, '{"notifications": ['), 400, "invalid_json")
    assert_error(post_batch(client, "{}", **{"Content-Type": "text/plain"}), 415, "unsupported_media_type")


def test_the_batch_endpoint_takes_only_post(client):
    assert_error(client.simulate_get("/api/notifications/batch"), 405, "method_not_allowed")


def test_a_batch_and_its_results_fit_the_documented_schemas(client):
    document = client.simulate_get("/openapi.json").json
    schemas = document["components"]["schemas"]
    operation = document["paths"]["/api/notifications/batch"]["post"]
    valid = notification(subject="S", metadata={"a": 1})
    validate(document, operation["requestBody"]["content"]["application/json"]["schema"], {"notifications": [valid]})

    answer = client.simulate_post("/api/notifications/batch", json={"notifications": [valid, {"channel": "pigeon"}]})

    validate(document, operation["responses"]["200"]["content"]["application/json"]["schema"], answer.json)
    accepted, refused = answer.json["results"]
    assert (accepted["status"], refused["status"]) == (202, 400)
    for result in (accepted, refused):
        validate(document, schemas["BatchResult"], result)
    validate(document, schemas["Error"], {name: refused[name] for name in ("error", "message", "details")})
    assert "batch_too_large" in schemas["Error"]["properties"]["error"]["examples"]


def _rule_breakers() -> list[dict[str, Any]]:
    """Items of the notification type that break the rules no type can say, and two that break none."""
    far = rfc3339(utcnow() + timedelta(days=400))
    return [
        notification(message="a\u0000b"),
        notification(recipient="   "),
        notification(channel="pigeon", message=" \t"),
        notification(channel="email", subject="a\nb", recipient="not an address"),
        notification(idempotency_key=ABSENT),
        notification(idempotency_key="k\u0000"),
        notification(send_at=far),
        notification(send_at="2026-01-31"),
        notification(callback_url="ftp://example.com/hook"),
        notification(metadata={"a\u0000": 1}),
        notification(channel="log", recipient="ünïcode", message="héllo ✓"),
        notification(channel="log", recipient="x\u2028y"),
    ]


@pytest.mark.parametrize("extra", [[], [notification(message="lone \ud800")]], ids=["typed", "plain-json"])
def test_each_item_read_into_its_type_gets_what_its_single_post_gets(client, extra):
    from service.batch import typed_items

    items = _rule_breakers() + extra
    body = json.dumps({"notifications": items}).encode()  # non-ASCII text as escapes, the lone surrogate among them
    # Without the lone surrogate every item has its type (read straight into it); with it, plain JSON.
    assert (typed_items(body) is None) == bool(extra)

    results = results_of(post_batch(client, body))

    assert [r["status"] for r in results][:11] == [400] * 10 + [202]
    for item, result in zip(items, results, strict=True):
        if item.get("idempotency_key") not in (None, "k\u0000"):
            item = {**item, "idempotency_key": f"single-{item['idempotency_key']}"}  # not a replay of the batch's
        single = post(client, json.dumps(item).encode())
        assert result["status"] == single.status_code, (item, result, single.text)
        if single.status_code >= 400:
            assert {k: v for k, v in result.items() if k != "status"} == single.json, item
