"""Requests refused before any field is checked: a body that is not one JSON object, a content type or a size the
API does not take, a wrong method, path or job id. Each gets its status and the one JSON error shape, whatever the
client accepts; none records anything or answers 5xx. And the near misses that are taken (a charset, deep nesting)."""

from __future__ import annotations

import http.client
import json
import uuid
from typing import Any

import pytest

from tests.asgi_server import AsgiServer
from tests.service import refusals
from tests.service.conftest import assert_error, job_count, notification, post
from tests.service.refusals import Bad, assert_refused, with_raw_value

# The module's ledger and apps (tests/service/refusals.py), offered to its tests by their names.
ledger, shared_client_for, client = refusals.ledger, refusals.shared_client_for, refusals.client


def raw(**fields: Any) -> str:
    """A body as JSON text, for cases where the exact characters matter."""
    return json.dumps(notification(**fields))


BAD_BODIES: dict[str, Bad] = {
    # Bodies that are not a JSON object
    "malformed JSON": Bad('{"recipient": "user@example.com", ', code="invalid_json"),
    "trailing garbage": Bad(raw() + " x", code="invalid_json"),
    "single quotes": Bad("{'recipient': 'user@example.com'}", code="invalid_json"),
    "NaN literal": Bad(with_raw_value("metadata", '{"n": NaN}'), code="invalid_json"),
    "Infinity literal": Bad(with_raw_value("metadata", '{"n": -Infinity}'), code="invalid_json"),
    "invalid UTF-8": Bad(
        b'{"recipient": "user@example.com", "message": "\xff\xfe", "channel": "email"}', code="invalid_json"
    ),
    "Latin-1 bytes": Bad(
        raw(message="café").replace("é", "\\u00e9").encode().replace(b"\\u00e9", b"\xe9"), code="invalid_json"
    ),
    "empty body": Bad(b"", code="invalid_json"),
    "nesting deeper than the parser allows": Bad(
        '{"metadata": ' + "[" * 10_000 + "]" * 10_000 + "}", code="invalid_json"
    ),
    "a JSON array": Bad([notification()], fields=(None,)),
    "a JSON string": Bad('"hello"', fields=(None,)),
    "a JSON number": Bad("42", fields=(None,)),
    "JSON null": Bad("null", fields=(None,)),
    # Content type and size
    "text/plain": Bad(raw(), 415, "unsupported_media_type", headers={"Content-Type": "text/plain"}),
    "form encoded": Bad(
        raw(), 415, "unsupported_media_type", headers={"Content-Type": "application/x-www-form-urlencoded"}
    ),
    "no content type": Bad(raw(), 415, "unsupported_media_type", headers={"Content-Type": ""}),
    "body over 64 KiB": Bad(notification(message="m" * (64 * 1024)), 413, "payload_too_large"),
}


@pytest.fixture(scope="module")
def app_settings() -> set[frozenset[tuple[str, str]]]:
    """The settings of every app this module's table builds."""
    return {frozenset(case.env.items()) for case in BAD_BODIES.values()}


@pytest.mark.parametrize("case", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_a_bad_request_gets_its_status_and_one_json_error_naming_what_is_wrong(shared_client_for, ledger, case: Bad):
    assert_refused(shared_client_for(**case.env), ledger, case)


def test_the_json_content_type_is_accepted_with_a_charset_and_in_any_case(client):
    assert post(client, notification(), **{"Content-Type": "application/json; charset=utf-8"}).status_code == 202
    assert post(client, notification(), **{"Content-Type": "Application/JSON"}).status_code == 202


def test_deeply_nested_metadata_within_the_size_limit_is_refused_or_stored_but_never_a_5xx(client):
    # Python's JSON parser accepts nesting up to its recursion limit; every later step (validation, the
    # ledger's JSON column, the GET's serialiser) must cope with what it accepted.
    for depth in range(850, 1000, 5):
        nested = "[" * depth + "]" * depth
        body = json.dumps(notification(metadata={"a": "PLACEHOLDER"}))
        result = post(client, body.replace('"PLACEHOLDER"', nested))
        assert result.status_code in (202, 400), f"depth {depth}: {result.status_code} {result.text}"
        if result.status_code == 202:
            got = client.simulate_get(f"/api/notifications/{result.json['job_id']}")
            assert got.status_code == 200, f"depth {depth}: GET {got.status_code} {got.text}"


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1.5e309"])
def test_a_metadata_number_too_large_for_a_double_is_a_400_and_never_stored_as_infinity(client, ledger, number):
    # Valid JSON syntax, but Python reads it as infinity, which is not JSON: PostgreSQL refuses it, and
    # SQLite would store it and serve `Infinity`, which no JSON parser reads.
    jobs_before = job_count(ledger)

    result = post(client, with_raw_value("metadata", f'{{"x": {number}}}'))

    assert result.status_code == 400, result.text
    assert_error(result, 400, result.json["error"])
    assert result.json["error"] in ("invalid_json", "validation_error")
    assert job_count(ledger) == jobs_before


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("PUT", "/api/notifications", {"GET", "POST"}),
        ("PATCH", "/api/notifications", {"GET", "POST"}),
        ("DELETE", "/api/notifications", {"GET", "POST"}),
        ("POST", "/api/notifications/{id}", {"GET", "DELETE"}),
        ("PUT", "/api/notifications/{id}", {"GET", "DELETE"}),
        ("POST", "/api/notifications/{id}/attempts", {"GET"}),
        ("GET", "/internal/notifications/{id}/retry", {"POST"}),
        ("POST", "/internal/queue/stats", {"GET"}),
        ("POST", "/healthz", {"GET"}),
    ],
)
def test_a_wrong_method_gets_405_with_an_allow_header(client, method, path, allowed):
    result = client.simulate_request(method, path.replace("{id}", str(uuid.uuid4())))

    assert_error(result, 405, "method_not_allowed")
    offered = {name.strip() for name in result.headers["allow"].split(",")}
    assert allowed <= offered <= allowed | {"OPTIONS"}


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/api",
        "/api/notification",
        "/api/notifications/x/y/z",
        "/internal/unknown",
        "/healthz/extra",
        "/static/x.css",
    ],
)
def test_an_unknown_path_gets_404_not_found(client, path):
    assert_error(client.simulate_get(path), 404, "not_found")


@pytest.mark.parametrize(
    "job_id",
    [str(uuid.uuid4()), "not-a-uuid", "12345", "00000000-0000-0000-0000-00000000000g", "%00", "'; DROP TABLE jobs;--"],
    ids=["unknown uuid", "word", "number", "almost a uuid", "nul", "sql"],
)
@pytest.mark.parametrize("method, suffix", [("GET", ""), ("DELETE", ""), ("GET", "/attempts")])
def test_an_unknown_or_malformed_job_id_gets_404_not_found(client, job_id, method, suffix):
    result = client.simulate_request(method, f"/api/notifications/{job_id}{suffix}")

    assert_error(result, 404, "not_found")


def test_a_client_asking_for_html_still_gets_json_errors(client):
    html = {"Accept": "text/html"}

    assert_error(client.simulate_get("/nowhere", headers=html), 404, "not_found")
    assert_error(client.simulate_put("/api/notifications", headers=html), 405, "method_not_allowed")
    result = client.simulate_post("/api/notifications", body="{", headers={**html, "Content-Type": "application/json"})
    assert_error(result, 400, "invalid_json")
    assert_error(post(client, notification(channel="pigeon"), Accept="text/html"), 400, "validation_error")


def test_a_client_asking_for_xml_still_gets_json_errors(client):
    assert_error(client.simulate_get("/nowhere", headers={"Accept": "application/xml"}), 404, "not_found")


def test_a_content_length_over_64_kib_is_413_before_any_of_the_body_is_waited_for(shared_client_for, ledger):
    # Over a real connection: Falcon's ASGI test client sends the length of the body it has, whatever the header says.
    server = AsgiServer(shared_client_for().app)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.putrequest("POST", "/api/notifications")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(10**9))
        conn.endheaders(raw().encode())
        answer = conn.getresponse()
        body = json.loads(answer.read())
        conn.close()
    finally:
        server.stop()

    assert answer.status == 413, body
    assert body["error"] == "payload_too_large"
