"""The bodies of intake declared once as types (service/shapes.py): the per-field details are read from the same
rules the type checks, and the OpenAPI document's schemas are the types' own."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from service import shapes
from service.field_rules import field_problems
from service.validation import type_problems
from tests.service.conftest import ABSENT, Worker, notification, post

BODIES: dict[str, dict[str, Any]] = {
    "valid": notification(),
    "valid with every field": notification(subject="S", metadata={"a": [1]}, send_at="2030-01-01T00:00:00Z"),
    "explicit nulls": notification(subject=None, metadata=None, send_at=None, idempotency_key=None),
    "unknown field": notification(priority="high"),
    "missing recipient": notification(recipient=ABSENT),
    "null channel": notification(channel=None),
    "recipient a number": notification(recipient=5),
    "empty recipient": notification(recipient=""),
    "message a boolean": notification(message=True),
    "message too long": notification(message="m" * (shapes.MAX_MESSAGE_LENGTH + 1)),
    "message at the limit": notification(message="m" * shapes.MAX_MESSAGE_LENGTH),
    "subject too long": notification(subject="s" * (shapes.MAX_SUBJECT_LENGTH + 1)),
    "metadata a list": notification(metadata=[1]),
    "send_at a number": notification(send_at=1),
    "several at once": {"recipient": 5, "channel": "email", "message": "", "subject": 3, "metadata": "x"},
}


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_the_field_by_field_rules_refuse_exactly_what_the_type_refuses(body):
    try:
        msgspec.convert(body, shapes.NewNotification)
        refused = False
    except msgspec.ValidationError:
        refused = True

    assert bool(type_problems(body)) == refused


def test_every_bad_field_is_named_with_what_the_type_says_of_it():
    problems = dict(type_problems(BODIES["several at once"]))

    assert problems == {
        "recipient": "must be a string, got number",
        "message": "must not be empty",
        "subject": "must be a string, got number",
        "metadata": "must be an object, got string",
    }
    assert dict(type_problems(BODIES["send_at a number"])) == {"send_at": "must be an RFC 3339 time string, got number"}
    assert dict(type_problems(BODIES["message too long"])) == {
        "message": f"must be at most {shapes.MAX_MESSAGE_LENGTH} characters, got {shapes.MAX_MESSAGE_LENGTH + 1}"
    }


def test_the_documented_intake_schemas_are_generated_from_the_types(client):
    documented = client.simulate_get("/openapi.json").json["components"]["schemas"]

    for name, schema in shapes.schemas(["email", "log", "webhook"]).items():
        assert documented[name] == schema
    notification_schema = documented["NewNotification"]
    assert notification_schema["required"] == ["recipient", "channel", "message"]
    assert notification_schema["additionalProperties"] is False
    assert notification_schema["properties"]["message"]["maxLength"] == shapes.MAX_MESSAGE_LENGTH
    assert documented["NewNotificationBatch"]["properties"]["notifications"]["maxItems"] == shapes.MAX_BATCH_ITEMS


LIMITS: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "both": ({"concurrency": 4, "rate": 2.5}, {}),
    "a whole rate": ({"rate": 5}, {}),
    "nulls": ({"concurrency": None, "rate": None}, {}),
    "nothing": ({}, {}),
    "concurrency a string": ({"concurrency": "5"}, {"concurrency": "must be a whole number or null, got string"}),
    "concurrency a fraction": ({"concurrency": 1.5}, {"concurrency": "must be a whole number or null, got number"}),
    "concurrency true": ({"concurrency": True}, {"concurrency": "must be a whole number or null, got boolean"}),
    "concurrency 0": ({"concurrency": 0}, {"concurrency": f"must be 1 to {shapes.MAX_CONCURRENCY}, got 0"}),
    "rate a word": ({"rate": "fast"}, {"rate": "must be a number or null, got string"}),
    "rate too high": ({"rate": 1e300}, {"rate": "must be 0.001 to 1e+06 attempts per second, got 1e+300"}),
    "unknown": ({"limit": 3}, {"limit": "is not a limit of a destination"}),
}


@pytest.mark.parametrize(("body", "problems"), LIMITS.values(), ids=LIMITS.keys())
def test_a_limits_body_is_refused_by_its_type_exactly_where_its_rules_name_a_problem(body, problems):
    try:
        msgspec.convert(body, shapes.Limits)
        refused = False
    except msgspec.ValidationError:
        refused = True

    assert dict(field_problems(body, shapes.Limits, "is not a limit of a destination")) == problems
    assert refused == bool(problems)


def test_the_answers_built_in_resources_have_exactly_their_types_fields(client, database):
    job_id = post(client, notification(subject="S", metadata={"k": [1]})).json["job_id"]
    Worker(database).claim(job_id)
    answers = {
        shapes.Job: client.simulate_get(f"/api/notifications/{job_id}").json,
        shapes.Attempts: client.simulate_get(f"/api/notifications/{job_id}/attempts").json,
        shapes.Stats: client.simulate_get("/internal/queue/stats").json,
        shapes.Destinations: client.simulate_get("/internal/destinations").json,
    }

    for shape, answer in answers.items():
        assert set(answer) == {field.name for field in msgspec.structs.fields(shape)}, shape
        msgspec.convert(answer, shape)
    (attempt,) = answers[shapes.Attempts]["attempts"]
    assert set(attempt) == {field.name for field in msgspec.structs.fields(shapes.Attempt)}
