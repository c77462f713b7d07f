"""GET /internal/destinations[/{key}] and PUT /internal/destinations/{key} through the app factory, on a real
ledger and the gate's state in a real Redis (under a key prefix of the test's own)."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from falcon import testing

from actors.broker import make_broker
from actors.flow import BreakerPolicy, Gate, Outcome
from ledger.database import Database
from service.app import create_app
from service.bodies import MAX_BODY_BYTES
from service.settings import ServiceSettings
from tests.conftest import free_port, settings_env
from tests.service.conftest import assert_error, notification, post
from tests.service.test_openapi import response_schema, validate

FIELDS = {
    "key", "concurrency", "rate", "in_flight", "circuit", "consecutive_failures", "opened_until", "paused_until",
    "waiting",
}  # fmt: skip
HOOK = "webhook:hooks.example.com:443"


@pytest.fixture
def make_api(database: Database, dispatcher, redis_server_url: str, queue_name: str, tmp_path, gate: Gate):
    # The PostgreSQL ledger is shared by the session's tests, and its reset leaves the overrides alone.
    database.run(lambda conn: conn.exec_driver_sql("DELETE FROM destinations"), transaction=True)

    def build(gate: Gate = gate, **env: str) -> testing.TestClient:
        env.setdefault("WJP_OUTBOX_DIR", str(tmp_path / "outbox"))
        settings = ServiceSettings.from_env(settings_env(database, redis_server_url, queue_name, **env))
        return testing.TestClient(create_app(settings, database=database, dispatcher=dispatcher, gate=gate))

    return build


@pytest.fixture
def api(make_api) -> testing.TestClient:
    return make_api()


def put(api: testing.TestClient, key: str, body: object, **headers: str) -> testing.Result:
    headers.setdefault("Content-Type", "application/json")
    raw = body if isinstance(body, bytes | str) else json.dumps(body)
    return api.simulate_put(f"/internal/destinations/{key}", body=raw, headers=headers)


def open_circuit(gate: Gate, key: str) -> None:
    gate.admit(key, "lease-1", lease_seconds=60, concurrency=None, rate=None)
    gate.release(key, "lease-1", Outcome.TRANSIENT, breaker=BreakerPolicy(threshold=1, cooldown=30))


def test_a_destination_nothing_is_known_of_reads_as_the_defaults(make_api) -> None:
    api = make_api(WJP_DESTINATION_CONCURRENCY="7", WJP_DESTINATION_RATE="2.5")

    got = api.simulate_get(f"/internal/destinations/{HOOK}")

    assert got.status_code == 200, got.text
    assert got.json == {
        "key": HOOK, "concurrency": 7, "rate": 2.5, "in_flight": 0, "circuit": "closed", "consecutive_failures": 0,
        "opened_until": None, "paused_until": None, "waiting": 0,
    }  # fmt: skip


@pytest.mark.parametrize(
    "spelling",
    ["webhook:[2001:db8::1]:443", "webhook:%5B2001:db8::1%5D:443", "webhook%3A%5B2001%3ADB8%3A%3A1%5D%3A443"],
)
def test_a_bracketed_ipv6_key_is_found_however_it_is_encoded_in_the_path(api, spelling: str) -> None:
    got = api.simulate_get(f"/internal/destinations/{spelling}")

    assert got.status_code == 200, got.text
    assert got.json["key"] == "webhook:[2001:db8::1]:443"


def test_a_key_is_read_in_its_canonical_spelling(api) -> None:
    assert api.simulate_get("/internal/destinations/webhook:Hooks.Example.COM:443").json["key"] == HOOK


@pytest.mark.parametrize("key", ["Webhook", "webhook:", "webhook:example.com:99999", "webhook:[nope]:1", "a:b:c:d"])
def test_a_malformed_key_is_not_found(api, key: str) -> None:
    assert_error(api.simulate_get(f"/internal/destinations/{key}"), 404, "not_found")
    assert_error(put(api, key, {"concurrency": 3}), 404, "not_found")


def test_a_limit_set_shows_in_the_destination_and_the_listing_and_null_takes_it_back(api) -> None:
    changed = put(api, HOOK, {"concurrency": 3, "rate": 0.5})
    assert changed.status_code == 200, changed.text
    assert (changed.json["concurrency"], changed.json["rate"]) == (3, 0.5)
    assert [entry["key"] for entry in api.simulate_get("/internal/destinations").json["data"]] == [HOOK]

    rate_only = put(api, HOOK, {"rate": None})
    assert (rate_only.json["concurrency"], rate_only.json["rate"]) == (3, None)
    assert api.simulate_get(f"/internal/destinations/{HOOK}").json["concurrency"] == 3

    back = put(api, HOOK, {"concurrency": None, "rate": None})
    assert (back.json["concurrency"], back.json["rate"]) == (20, None)
    assert api.simulate_get("/internal/destinations").json == {"data": []}


def test_the_listing_shows_destinations_with_jobs_waiting_and_circuits_not_closed(api, gate: Gate) -> None:
    for _ in range(2):
        assert post(api, notification(channel="webhook", recipient="https://Hooks.Example.com/in")).status_code == 202
    assert post(api, notification(channel="log", recipient="ops")).status_code == 202
    open_circuit(gate, "sms:gateway.example.net")
    gate.admit("webhook:idle.example.com:443", "lease-2", lease_seconds=60, concurrency=None, rate=None)
    gate.release("webhook:idle.example.com:443", "lease-2", Outcome.SUCCESS, breaker=BreakerPolicy())

    listing = api.simulate_get("/internal/destinations")

    assert listing.status_code == 200, listing.text
    by_key = {entry["key"]: entry for entry in listing.json["data"]}
    assert list(by_key) == ["log", "sms:gateway.example.net", HOOK]
    assert all(set(entry) == FIELDS for entry in by_key.values())
    assert (by_key[HOOK]["waiting"], by_key["log"]["waiting"], by_key[HOOK]["circuit"]) == (2, 1, "closed")
    tripped = by_key["sms:gateway.example.net"]
    assert (tripped["circuit"], tripped["consecutive_failures"], tripped["waiting"]) == ("open", 1, 0)
    assert datetime.fromisoformat(tripped["opened_until"]).tzinfo is not None
    assert tripped["opened_until"].endswith("Z")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 1.5}, "concurrency"),
        ({"concurrency": "5"}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"concurrency": 10**12}, "concurrency"),
        ({"rate": 0}, "rate"),
        ({"rate": -1}, "rate"),
        ({"rate": "fast"}, "rate"),
        ({"rate": 1e300}, "rate"),
        ({"limit": 3}, "limit"),
    ],
)
def test_a_bad_limit_is_refused_naming_its_field_and_changes_nothing(api, body: dict, field: str) -> None:
    put(api, HOOK, {"concurrency": 4})

    refused = assert_error(put(api, HOOK, body), 400, "validation_error")

    assert [detail["field"] for detail in refused["details"]] == [field]
    assert api.simulate_get(f"/internal/destinations/{HOOK}").json["concurrency"] == 4


def test_a_body_that_is_not_a_json_object_is_refused_like_every_other_body(api) -> None:
    assert_error(put(api, HOOK, "{"), 400, "invalid_json")
    assert_error(put(api, HOOK, [1]), 400, "validation_error")
    assert_error(put(api, HOOK, {"rate": 1}, **{"Content-Type": "text/plain"}), 415, "unsupported_media_type")
    assert_error(put(api, HOOK, b"{" + b" " * MAX_BODY_BYTES + b"}"), 413, "payload_too_large")


def test_the_destinations_need_the_admin_token_when_one_is_set(make_api) -> None:
    api = make_api(WJP_ADMIN_TOKEN="s3cret-admin")
    auth = {"Authorization": "Bearer s3cret-admin"}

    assert_error(api.simulate_get("/internal/destinations"), 401, "unauthorized")
    assert_error(api.simulate_get(f"/internal/destinations/{HOOK}"), 401, "unauthorized")
    assert_error(put(api, HOOK, {"concurrency": 2}), 401, "unauthorized")
    assert api.simulate_get(f"/internal/destinations/{HOOK}").status_code == 401
    assert put(api, HOOK, {"concurrency": 2}, **auth).status_code == 200
    assert api.simulate_get("/internal/destinations", headers=auth).json["data"][0]["concurrency"] == 2


def test_without_redis_the_destinations_answer_503_and_a_limit_is_still_saved(make_api, database) -> None:
    # A port nobody listens on: connections are refused, as with a stopped Redis.
    dead = Gate(make_broker(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5).client)
    api = make_api(gate=dead)

    body = assert_error(api.simulate_get("/internal/destinations"), 503, "redis_unavailable")
    assert "127.0.0.1" not in body["message"]
    assert_error(api.simulate_get(f"/internal/destinations/{HOOK}"), 503, "redis_unavailable")
    assert_error(put(api, HOOK, {"concurrency": 9}), 503, "redis_unavailable")
    assert database.run(lambda conn: conn.exec_driver_sql("SELECT concurrency FROM destinations").scalar()) == 9


def test_the_destination_answers_fit_their_documented_schemas(api, gate: Gate) -> None:
    document = api.simulate_get("/openapi.json").json
    open_circuit(gate, HOOK)
    item = "/internal/destinations/{key}"

    changed = put(api, HOOK, {"concurrency": 5, "rate": 1})
    validate(document, response_schema(document, item, "put", 200), changed.json)
    got = api.simulate_get(f"/internal/destinations/{HOOK}")
    validate(document, response_schema(document, item, "get", 200), got.json)
    listing = api.simulate_get("/internal/destinations").json
    assert listing["data"]
    validate(document, response_schema(document, "/internal/destinations", "get", 200), listing)
    body = document["paths"][item]["put"]["requestBody"]["content"]["application/json"]["schema"]
    validate(document, body, {"concurrency": None, "rate": 2.5})


def test_the_open_circuits_are_a_gauge_of_the_metrics(api, gate: Gate) -> None:
    def gauge() -> float:
        text = api.simulate_get("/metrics").text
        (line,) = [line for line in text.splitlines() if line.startswith("wjp_destinations_open_circuits ")]
        return float(line.split()[1])

    assert gauge() == 0
    open_circuit(gate, HOOK)
    open_circuit(gate, "sms:gateway.example.net")
    assert gauge() == 2
    gate.reset(HOOK)
    assert gauge() == 1
