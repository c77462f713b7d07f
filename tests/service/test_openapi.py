"""GET /openapi.json: an OpenAPI 3.1 document that is structurally sound, names exactly the routes the app
serves (read from Falcon's own inspection of the app) and describes the answers the app really gives."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

import pytest
from falcon import inspect

from tests.service.conftest import Worker, notification, post

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
JSON_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


@pytest.fixture
def document(client) -> dict[str, Any]:
    result = client.simulate_get("/openapi.json")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("application/json")
    return result.json


def resolve(document: dict[str, Any], ref: str) -> Any:
    """Follow a local JSON pointer like `#/components/schemas/Job`; raise KeyError when it leads nowhere."""
    assert ref.startswith("#/"), f"only local references are expected, got {ref!r}"
    target: Any = document
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        target = target[int(token)] if isinstance(target, list) else target[token]
    return target


def references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in references(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in references(item)]
    return []


def validate(document: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "$") -> None:
    """A small JSON Schema check (the keywords this document uses): type, required, properties,
    additionalProperties, enum, items, minLength/maxLength, formats date-time and uuid, anyOf and $ref."""
    if "$ref" in schema:
        validate(document, resolve(document, schema["$ref"]), value, where)
        return
    if "anyOf" in schema:
        failures = []
        for branch in schema["anyOf"]:
            try:
                validate(document, branch, value, where)
                break
            except AssertionError as exc:
                failures.append(str(exc))
        else:
            raise AssertionError(f"{where}: {value!r} fits no branch of anyOf: {failures}")
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        ok = any(
            isinstance(value, JSON_TYPES[name]) and not (name in ("integer", "number") and isinstance(value, bool))
            for name in names
        )
        assert ok, f"{where}: {value!r} is not of type {types}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} is not one of {schema['enum']}"
    if isinstance(value, str):
        if "minLength" in schema:
            assert len(value) >= schema["minLength"], where
        if "maxLength" in schema:
            assert len(value) <= schema["maxLength"], where
        if schema.get("format") == "uuid":
            uuid.UUID(value)
        if schema.get("format") == "date-time":
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value), f"{where}: {value}"
            datetime.fromisoformat(value)
    if isinstance(value, dict):
        for name in schema.get("required", []):
            assert name in value, f"{where}: the required {name!r} is missing from {sorted(value)}"
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                validate(document, properties[name], item, f"{where}.{name}")
            else:
                assert schema.get("additionalProperties", True) is not False, f"{where}: unexpected {name!r}"
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            validate(document, schema["items"], item, f"{where}[{index}]")


def response_schema(document: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    response = document["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:
        response = resolve(document, response["$ref"])
    return response["content"]["application/json"]["schema"]


# --- The document ----------------------------------------------------------------------------------------------------


def test_the_document_is_openapi_3_1_with_a_title_and_version(document):
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] and document["info"]["version"]
    assert isinstance(document["paths"], dict) and document["paths"]


def test_the_document_is_public_even_with_an_admin_token(make_client):
    assert make_client(WJP_ADMIN_TOKEN="s3cret").simulate_get("/openapi.json").status_code == 200


def test_the_documented_routes_are_exactly_the_routes_the_app_serves(client, document):
    # Falcon's own inspection of the app, without its default responders (OPTIONS, 405)
    served = {
        (route.path, method.method.lower())
        for route in inspect.inspect_app(client.app).routes
        for method in route.methods
        if not method.internal and method.method != "OPTIONS"
    }
    documented = {
        (path, method) for path, item in document["paths"].items() for method in item if method in HTTP_METHODS
    }

    assert ("/api/notifications", "post") in served
    assert served == documented, {"undocumented": served - documented, "not served": documented - served}


def test_every_reference_in_the_document_leads_to_something(document):
    refs = references(document)

    assert refs, "the document is expected to share its schemas through $ref"
    for ref in refs:
        try:
            resolve(document, ref)
        except (KeyError, IndexError, ValueError):
            pytest.fail(f"{ref} leads nowhere")


def test_every_operation_has_responses_with_descriptions_and_json_schemas(document):
    for path, item in document["paths"].items():
        assert path.startswith("/")
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            assert operation["responses"], (path, method)
            for status, response in operation["responses"].items():
                assert status == "default" or re.fullmatch(r"[1-5]\d\d", status), (path, method, status)
                if "$ref" in response:
                    response = resolve(document, response["$ref"])
                assert isinstance(response.get("description"), str), (path, method, status)
                for media in response.get("content", {}).values():
                    assert isinstance(media["schema"], dict)


def test_every_path_template_parameter_is_declared_as_a_required_path_parameter(document):
    for path, item in document["paths"].items():
        names = set(re.findall(r"{([^}]+)}", path))
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            declared = {
                p["name"]: p
                for p in [*item.get("parameters", []), *operation.get("parameters", [])]
                if p.get("in") == "path"
            }
            assert set(declared) == names, (path, method)
            assert all(p.get("required") is True for p in declared.values()), (path, method)


def test_the_documented_channels_are_the_enabled_ones(document):
    channel = document["components"]["schemas"]["NewNotification"]["properties"]["channel"]

    assert channel["enum"] == ["email", "log", "webhook"]


def test_the_error_codes_of_the_contract_are_documented(document):
    documented = set(document["components"]["schemas"]["Error"]["properties"]["error"].get("examples", []))
    contract = {
        "invalid_json",
        "validation_error",
        "idempotency_key_required",
        "idempotency_key_conflict",
        "idempotency_key_mismatch",
        "unauthorized",
        "not_found",
        "method_not_allowed",
        "not_cancellable",
        "not_failed",
        "payload_too_large",
        "unsupported_media_type",
        "ledger_unavailable",
        "rate_limited",
    }

    assert contract <= documented


# --- The app's answers match the document --------------------------------------------------------------------------


def test_a_request_body_of_the_contract_fits_the_documented_request_schema(document):
    body = notification(subject="S", metadata={"a": 1}, send_at="2030-01-01T08:00:00Z")
    schema = document["paths"]["/api/notifications"]["post"]["requestBody"]["content"]["application/json"]["schema"]

    validate(document, schema, body)


def test_accepted_and_replayed_answers_fit_the_accepted_schema(client, document):
    body = notification()
    created, replayed = post(client, body), post(client, body)

    assert (created.status_code, replayed.status_code) == (202, 200)
    validate(document, response_schema(document, "/api/notifications", "post", 202), created.json)
    validate(document, response_schema(document, "/api/notifications", "post", 200), replayed.json)
    validate(document, document["components"]["schemas"]["Accepted"], created.json)


def test_job_attempts_stats_and_retry_answers_fit_their_schemas(client, document, database):
    job_id = post(client, notification(subject="S", metadata={"k": [1]})).json["job_id"]
    item = "/api/notifications/{job_id}"

    got = client.simulate_get(f"/api/notifications/{job_id}")
    validate(document, response_schema(document, item, "get", 200), got.json)
    validate(document, document["components"]["schemas"]["Job"], got.json)

    worker = Worker(database)
    worker.retry_later(job_id, worker.claim(job_id), error="503")
    worker.claim(job_id)
    attempts = client.simulate_get(f"/api/notifications/{job_id}/attempts")
    assert len(attempts.json["attempts"]) == 2
    validate(document, response_schema(document, item + "/attempts", "get", 200), attempts.json)

    stats = client.simulate_get("/internal/queue/stats")
    validate(document, response_schema(document, "/internal/queue/stats", "get", 200), stats.json)

    worker.fail(job_id, 2)
    retried = client.simulate_post(f"/internal/notifications/{job_id}/retry")
    assert retried.status_code == 202
    validate(document, response_schema(document, "/internal/notifications/{job_id}/retry", "post", 202), retried.json)

    cancelled = client.simulate_delete(f"/api/notifications/{job_id}")
    validate(document, response_schema(document, item, "delete", 200), cancelled.json)


def test_error_answers_fit_the_error_schema(client, document):
    error = document["components"]["schemas"]["Error"]

    for result in (
        post(client, notification(channel="pigeon")),
        client.simulate_get(f"/api/notifications/{uuid.uuid4()}"),
        client.simulate_put("/api/notifications"),
    ):
        assert result.status_code >= 400
        validate(document, error, result.json)
