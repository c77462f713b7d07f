"""POST /api/notifications through the app factory: exactly-once intake by idempotency key, on a real ledger
(PostgreSQL and SQLite) and a real Redis queue."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest

from ledger import queries
from ledger.states import Status
from ledger.timestamps import utcnow
from tests.service.conftest import ABSENT, assert_error, job_count, ledger_counts, notification, post

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def test_a_new_key_is_accepted_with_202_the_job_id_status_key_creation_time_and_location(client):
    body = notification(idempotency_key="abc123")

    result = post(client, body)

    assert result.status_code == 202, result.text
    answer = result.json
    assert set(answer) == {"job_id", "status", "idempotency_key", "created_at"}
    job_id = uuid.UUID(answer["job_id"])
    assert answer["status"] == "PENDING"
    assert answer["idempotency_key"] == "abc123"
    assert RFC3339_UTC.match(answer["created_at"]), answer["created_at"]
    created = datetime.fromisoformat(answer["created_at"])
    assert abs((utcnow() - created).total_seconds()) < 60
    assert urlsplit(result.headers["location"]).path == f"/api/notifications/{job_id}"
    assert "idempotent-replayed" not in result.headers
    assert result.headers["content-type"].startswith("application/json")


def test_an_accepted_notification_is_committed_in_the_ledger_and_can_be_read_back(client, database):
    body = notification(subject="Hello", metadata={"order": 42})

    job_id = post(client, body).json["job_id"]

    # The row is in the ledger itself, not only in the answer
    row = database.run(lambda conn: queries.get_job(conn, uuid.UUID(job_id), scope=None))
    assert row is not None and row.status is Status.PENDING
    assert (row.recipient, row.channel, row.subject, row.metadata) == (
        "user@example.com",
        "email",
        "Hello",
        {"order": 42},
    )
    # and the API serves it
    got = client.simulate_get(f"/api/notifications/{job_id}")
    assert got.status_code == 200
    assert got.json["job_id"] == job_id
    assert got.json["status"] == "PENDING"
    assert got.json["recipient"] == body["recipient"]
    assert got.json["idempotency_key"] == body["idempotency_key"]


def test_an_accepted_notification_has_exactly_one_dramatiq_message_in_redis_named_after_its_first_dispatch(
    client, redis_messages
):
    job_id = post(client, notification()).json["job_id"]

    queued = redis_messages.queued()
    assert list(queued) == [f"{job_id}.1"]
    message = queued[f"{job_id}.1"]
    assert message["args"] == [job_id]
    assert message["options"]["wjp_rid"] == f"{job_id}.1"
    assert message["queue_name"] == redis_messages.queue
    assert redis_messages.delayed() == {}


def test_a_replay_with_the_same_payload_returns_200_the_same_job_id_and_no_new_row_or_message(
    client, database, redis_messages
):
    body = notification()
    first = post(client, body)
    assert first.status_code == 202

    again = post(client, body)

    assert again.status_code == 200, again.text
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json["job_id"] == first.json["job_id"]
    assert again.json["status"] == "PENDING"
    assert again.json["idempotency_key"] == body["idempotency_key"]
    assert again.json["created_at"] == first.json["created_at"]
    assert urlsplit(again.headers["location"]).path == f"/api/notifications/{first.json['job_id']}"
    assert list(redis_messages.queued()) == [f"{first.json['job_id']}.1"]
    assert job_count(database) == 1
    assert client.simulate_get("/internal/queue/stats").json["pending"] == 1


def test_a_replay_reports_the_jobs_current_status_not_the_one_it_had_at_intake(client):
    body = notification()
    job_id = post(client, body).json["job_id"]
    assert client.simulate_delete(f"/api/notifications/{job_id}").status_code == 200

    again = post(client, body)

    assert again.status_code == 200
    assert (again.json["job_id"], again.json["status"]) == (job_id, "CANCELLED")


@pytest.mark.parametrize(
    "change",
    [
        {"recipient": "other@example.com"},
        {"channel": "log"},
        {"message": "Another message"},
        {"subject": "A subject"},
        {"metadata": {"order": 43}},
        {"send_at": "2020-01-01T08:00:01Z"},
    ],
    ids=["recipient", "channel", "message", "subject", "metadata", "send_at"],
)
def test_the_same_key_with_a_different_payload_is_refused_with_422_and_changes_nothing(
    client, database, redis_messages, change
):
    body = notification(metadata={"order": 42}, send_at="2020-01-01T08:00:00Z")
    job_id = post(client, body).json["job_id"]

    result = post(client, {**body, **change})

    error = assert_error(result, 422, "idempotency_key_mismatch")
    assert job_id in str(error["details"])
    assert job_count(database) == 1
    got = client.simulate_get(f"/api/notifications/{job_id}").json
    assert got["recipient"] == body["recipient"] and got["channel"] == body["channel"]


def test_adding_an_optional_field_to_a_replay_counts_as_a_different_payload(client):
    body = notification()
    post(client, body)

    assert_error(post(client, {**body, "subject": "now with a subject"}), 422, "idempotency_key_mismatch")


def test_the_order_of_metadata_keys_does_not_matter_for_a_replay(client):
    # Raw JSON: the key order is exactly what the producer sent, at every level
    first = (
        '{"recipient": "user@example.com", "channel": "email", "message": "hi", "idempotency_key": "order-1",'
        ' "metadata": {"a": 1, "b": {"x": [1, 2], "y": null}, "c": "z"}}'
    )
    second = (
        '{"metadata": {"c": "z", "b": {"y": null, "x": [1, 2]}, "a": 1}, "idempotency_key": "order-1",'
        ' "message": "hi", "channel": "email", "recipient": "user@example.com"}'
    )
    created = post(client, first)
    assert created.status_code == 202

    again = post(client, second)

    assert again.status_code == 200, again.text
    assert again.json["job_id"] == created.json["job_id"]


def test_the_order_of_items_in_a_metadata_list_does_matter(client):
    body = notification(metadata={"tags": [1, 2]})
    post(client, body)

    assert_error(post(client, {**body, "metadata": {"tags": [2, 1]}}), 422, "idempotency_key_mismatch")


@pytest.mark.parametrize(
    "same_instant",
    ["2020-01-01T08:00:00Z", "2020-01-01T08:00:00+00:00", "2020-01-01T08:00:00.000Z", "2020-01-01T03:30:00-04:30"],
)
def test_send_at_in_another_time_zone_for_the_same_instant_is_a_replay(client, same_instant):
    body = notification(send_at="2020-01-01T10:00:00+02:00")
    created = post(client, body)
    assert created.status_code == 202, created.text

    again = post(client, {**body, "send_at": same_instant})

    assert again.status_code == 200, again.text
    assert again.json["job_id"] == created.json["job_id"]


def test_a_key_given_only_in_the_idempotency_key_header_is_accepted(client):
    result = post(client, notification(idempotency_key=ABSENT), **{"Idempotency-Key": "from-header"})

    assert result.status_code == 202, result.text
    assert result.json["idempotency_key"] == "from-header"
    got = client.simulate_get(f"/api/notifications/{result.json['job_id']}").json
    assert got["idempotency_key"] == "from-header"


def test_the_same_key_in_the_header_and_the_body_is_accepted(client):
    result = post(client, notification(idempotency_key="both"), **{"Idempotency-Key": "both"})

    assert result.status_code == 202, result.text
    assert result.json["idempotency_key"] == "both"


def test_different_keys_in_the_header_and_the_body_are_refused_with_400(client, database):
    result = post(client, notification(idempotency_key="in-body"), **{"Idempotency-Key": "in-header"})

    assert_error(result, 400, "idempotency_key_conflict")
    assert job_count(database) == 0


def test_a_key_sent_in_the_header_and_then_in_the_body_is_the_same_key(client):
    body = notification(idempotency_key=ABSENT)
    created = post(client, body, **{"Idempotency-Key": "K"})
    assert created.status_code == 202

    # When the same string comes in the body, it is a replay of that request
    again = post(client, {**body, "idempotency_key": "K"})

    assert again.status_code == 200, again.text
    assert again.json["job_id"] == created.json["job_id"]
    assert again.headers.get("idempotent-replayed") == "true"


def test_a_key_sent_in_the_body_and_then_in_the_header_is_the_same_key(client):
    body = notification(idempotency_key="K2")
    created = post(client, body)

    again = post(client, notification(**{**body, "idempotency_key": ABSENT}), **{"Idempotency-Key": "K2"})

    assert again.status_code == 200, again.text
    assert again.json["job_id"] == created.json["job_id"]


def test_a_non_ascii_key_in_the_header_is_the_same_key_as_the_same_string_in_the_body_or_is_refused(client):
    # A producer's HTTP library sends the UTF-8 bytes of "clé"; WSGI hands header bytes over decoded as Latin-1.
    on_the_wire = "clé".encode().decode("latin-1")

    from_header = post(client, notification(idempotency_key=ABSENT), **{"Idempotency-Key": on_the_wire})

    if from_header.status_code == 400:
        return  # refusing a header key that is not ASCII (an RFC 8941 string) keeps the rule too
    assert from_header.status_code == 202, from_header.text
    assert from_header.json["idempotency_key"] == "clé"
    from_body = post(client, notification(idempotency_key="clé"))
    assert from_body.status_code == 200, from_body.text
    assert from_body.json["job_id"] == from_header.json["job_id"]


def test_a_missing_idempotency_key_is_refused_with_400_idempotency_key_required(client, database):
    assert_error(post(client, notification(idempotency_key=ABSENT)), 400, "idempotency_key_required")
    assert job_count(database) == 0


def test_an_empty_idempotency_key_is_refused_with_400(client, database):
    result = post(client, notification(idempotency_key=""))

    assert result.status_code == 400
    assert result.json["error"] in ("idempotency_key_required", "validation_error")
    assert job_count(database) == 0


def test_an_idempotency_key_of_256_characters_is_refused_with_a_validation_error_naming_it(client, database):
    error = assert_error(post(client, notification(idempotency_key="k" * 256)), 400, "validation_error")

    assert [d["field"] for d in error["details"]] == ["idempotency_key"]
    assert job_count(database) == 0


def test_an_idempotency_key_of_256_characters_in_the_header_is_refused_too(client):
    result = post(client, notification(idempotency_key=ABSENT), **{"Idempotency-Key": "k" * 256})

    assert_error(result, 400, "validation_error")


@pytest.mark.parametrize("key", ["k" * 255, "é" * 255, "🙂" * 255, "x"], ids=["ascii", "latin", "astral", "one"])
def test_an_idempotency_key_of_1_to_255_characters_is_accepted_and_stored_as_sent(client, key):
    result = post(client, notification(idempotency_key=key))

    assert result.status_code == 202, result.text
    assert result.json["idempotency_key"] == key
    assert client.simulate_get(f"/api/notifications/{result.json['job_id']}").json["idempotency_key"] == key
    # The stored key is found again by the exact string: the same request is a replay
    assert post(client, notification(idempotency_key=key)).json["job_id"] == result.json["job_id"]


def test_a_notification_scheduled_an_hour_ahead_is_recorded_but_not_yet_sent_to_redis(client, database, redis_messages):
    send_at = (utcnow() + timedelta(hours=1)).replace(microsecond=0)

    result = post(client, notification(send_at=send_at.isoformat().replace("+00:00", "Z")))

    assert result.status_code == 202, result.text
    job = client.simulate_get(f"/api/notifications/{result.json['job_id']}").json
    assert job["status"] == "PENDING"
    assert datetime.fromisoformat(job["next_attempt_at"]) == send_at
    # Long delays are not parked in Redis: the reconciler dispatches the job when it falls due
    assert redis_messages.queued() == {}
    assert redis_messages.delayed() == {}
    assert ledger_counts(database)[Status.PENDING] == 1


def test_a_notification_scheduled_seconds_ahead_waits_in_the_delay_queue_until_it_is_due(client, redis_messages):
    send_at = utcnow() + timedelta(seconds=5)

    result = post(client, notification(send_at=send_at.isoformat()))

    assert result.status_code == 202, result.text
    job_id = result.json["job_id"]
    assert redis_messages.queued() == {}
    delayed = redis_messages.delayed()
    assert list(delayed) == [f"{job_id}.1"]
    message = delayed[f"{job_id}.1"]
    assert message["args"] == [job_id]
    assert message["options"]["wjp_rid"] == f"{job_id}.1"
    eta = datetime.fromtimestamp(message["options"]["eta"] / 1000, UTC)
    assert abs((eta - send_at).total_seconds()) < 1.0


def test_a_notification_whose_send_at_has_passed_is_sent_to_redis_at_once(client, redis_messages):
    result = post(client, notification(send_at="2001-01-01T00:00:00Z"))

    assert result.status_code == 202, result.text
    assert list(redis_messages.queued()) == [f"{result.json['job_id']}.1"]


def test_two_different_keys_make_two_jobs_with_two_messages(client, database, redis_messages):
    first = post(client, notification()).json["job_id"]
    second = post(client, notification()).json["job_id"]

    assert first != second
    assert set(redis_messages.queued()) == {f"{first}.1", f"{second}.1"}
    assert ledger_counts(database)[Status.PENDING] == 2


def test_max_attempts_is_fixed_at_intake_from_wjp_max_attempts(make_client):
    client = make_client(WJP_MAX_ATTEMPTS="7")

    job_id = post(client, notification()).json["job_id"]

    assert client.simulate_get(f"/api/notifications/{job_id}").json["max_attempts"] == 7
