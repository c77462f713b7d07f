"""Operations endpoints: liveness, readiness (naming what is down) and the Prometheus metrics."""

from __future__ import annotations

import pytest

from actors.broker import Dispatcher, make_broker
from ledger.database import Database
from tests.conftest import free_port
from tests.service.conftest import assert_error


def closed_redis(queue: str) -> Dispatcher:
    """A dispatcher whose Redis port was free a moment ago: nothing listens there."""
    return Dispatcher(make_broker(f"redis://127.0.0.1:{free_port()}/0"), queue)


def closed_ledger() -> Database:
    return Database(f"postgresql://postgres@127.0.0.1:{free_port()}/x")


def components(body: dict) -> dict[str, str]:
    return {d["component"]: d["state"] for d in body["details"]}


def test_healthz_answers_200_while_the_process_is_up(client):
    result = client.simulate_get("/healthz")

    assert result.status_code == 200
    assert result.headers["content-type"].startswith("application/json")
    assert result.json["status"] == "ok"


def test_healthz_answers_200_even_when_the_ledger_and_redis_are_down(client_for, queue_name):
    client = client_for(closed_ledger(), closed_redis(queue_name))

    assert client.simulate_get("/healthz").status_code == 200


def test_readyz_answers_200_when_the_ledger_and_redis_are_reachable(client):
    result = client.simulate_get("/readyz")

    assert result.status_code == 200, result.text
    assert result.json["ledger"] == "ok"
    assert result.json["redis"] == "ok"


def test_readyz_answers_503_naming_redis_when_redis_is_unreachable(client_for, database, queue_name):
    client = client_for(database, closed_redis(queue_name))

    body = assert_error(client.simulate_get("/readyz"), 503, "not_ready")

    assert "redis" in body["message"].lower()
    assert "ledger" not in body["message"].lower()
    states = components(body)
    assert states["ledger"] == "ok"
    assert states["redis"] != "ok"


def test_readyz_answers_503_naming_the_ledger_when_the_database_is_unreachable(client_for, dispatcher):
    client = client_for(closed_ledger(), dispatcher)

    body = assert_error(client.simulate_get("/readyz"), 503, "not_ready")

    assert "ledger" in body["message"].lower()
    assert "redis" not in body["message"].lower()
    states = components(body)
    assert states["redis"] == "ok"
    assert states["ledger"] != "ok"


def test_readyz_names_both_when_both_are_down(client_for, queue_name):
    client = client_for(closed_ledger(), closed_redis(queue_name))

    body = assert_error(client.simulate_get("/readyz"), 503, "not_ready")

    assert "ledger" in body["message"].lower() and "redis" in body["message"].lower()
    assert all(state != "ok" for state in components(body).values())


def test_readyz_names_what_is_down_but_never_a_drivers_message_with_host_port_or_user(client_for, queue_name):
    ledger_port, redis_port = free_port(), free_port()
    ledger = Database(f"postgresql://ledger_operator:hunter2@127.0.0.1:{ledger_port}/x")
    redis = Dispatcher(make_broker(f"redis://redis_operator:hunter2@127.0.0.1:{redis_port}/0"), queue_name)
    client = client_for(ledger, redis)

    result = client.simulate_get("/readyz")

    body = assert_error(result, 503, "not_ready")
    assert components(body) == {"ledger": "unavailable", "redis": "unavailable"}
    for leak in (str(ledger_port), str(redis_port), "127.0.0.1", "ledger_operator", "redis_operator", "hunter2"):
        assert leak not in result.text, f"/readyz shows {leak!r}: {result.text}"


def test_readyz_and_healthz_are_public_when_an_admin_token_is_set(make_client):
    client = make_client(WJP_ADMIN_TOKEN="s3cret")

    assert client.simulate_get("/healthz").status_code == 200
    assert client.simulate_get("/readyz").status_code == 200


# --- /metrics --------------------------------------------------------------------------------------------------------


def assert_prometheus_text(result) -> None:
    assert result.status_code == 200, result.text
    assert result.headers["content-type"].startswith("text/plain"), result.headers
    assert "# TYPE " in result.text


def test_metrics_are_served_in_the_prometheus_text_format(client):
    assert_prometheus_text(client.simulate_get("/metrics"))


@pytest.mark.parametrize("authorization", [None, "Bearer wrong"], ids=["none", "wrong"])
def test_metrics_need_the_admin_token_when_one_is_set(make_client, authorization):
    client = make_client(WJP_ADMIN_TOKEN="s3cret")
    headers = {} if authorization is None else {"Authorization": authorization}

    assert_error(client.simulate_get("/metrics", headers=headers), 401, "unauthorized")


def test_metrics_answer_with_the_admin_token(make_client):
    client = make_client(WJP_ADMIN_TOKEN="s3cret")

    assert_prometheus_text(client.simulate_get("/metrics", headers={"Authorization": "Bearer s3cret"}))


def test_a_variant_spelling_of_the_metrics_path_does_not_get_past_the_admin_token(make_client):
    client = make_client(WJP_ADMIN_TOKEN="s3cret")

    for path in ("//metrics", "/metrics/"):
        result = client.simulate_get(path)
        assert result.status_code in (401, 404), (path, result.status_code)
