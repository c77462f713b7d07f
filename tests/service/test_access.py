"""Producer API keys (SPEC "Access"): made with `wjp api-key create NAME`; once one exists, /api/* needs
`Authorization: Bearer <key>`, idempotency keys are scoped per API key, and a job is visible only to the key
that created it. The keys are made with the real command and used through the app factory's app."""

from __future__ import annotations

import pytest

from ledger.database import Database
from service.cli import main
from tests.service.conftest import assert_error, notification, post


@pytest.fixture
def create_api_key(database: Database, monkeypatch, capsys):
    """Run `wjp api-key create NAME` against the test's ledger and return the key it printed last."""

    def create(name: str) -> str:
        monkeypatch.setenv("DATABASE_URL", database.engine.url.render_as_string(hide_password=False))
        capsys.readouterr()
        try:
            code = main(["api-key", "create", name])
        except SystemExit as exc:  # argparse refusing the command
            code = exc.code
        captured = capsys.readouterr()
        output = captured.out
        assert code == 0, f"wjp api-key create exited {code}: {output}{captured.err}"
        lines = output.strip().splitlines()
        assert lines, "wjp api-key create printed nothing"
        key = lines[-1].strip()
        assert key and " " not in key, f"the last line is not a key alone: {lines[-1]!r}"
        return key

    return create


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_wjp_api_key_create_prints_a_different_key_for_each_name(create_api_key):
    assert create_api_key("alpha") != create_api_key("beta")


def test_once_a_key_exists_the_producer_api_needs_it(create_api_key, make_client):
    key = create_api_key("alpha")
    client = make_client()

    assert_error(post(client, notification()), 401, "unauthorized")
    assert_error(post(client, notification(), Authorization="Bearer not-a-key"), 401, "unauthorized")
    created = post(client, notification(), **bearer(key))
    assert created.status_code == 202, created.text
    job_id = created.json["job_id"]
    assert_error(client.simulate_get(f"/api/notifications/{job_id}"), 401, "unauthorized")
    assert client.simulate_get(f"/api/notifications/{job_id}", headers=bearer(key)).status_code == 200


def test_the_admin_token_does_not_open_the_producer_api(create_api_key, make_client):
    create_api_key("alpha")
    client = make_client(WJP_ADMIN_TOKEN="s3cret")

    assert_error(post(client, notification(), **bearer("s3cret")), 401, "unauthorized")


def test_a_job_is_visible_only_to_the_key_that_created_it(create_api_key, make_client):
    alpha, beta = create_api_key("alpha"), create_api_key("beta")
    client = make_client()
    job_id = post(client, notification(), **bearer(alpha)).json["job_id"]

    for method, suffix in (("GET", ""), ("GET", "/attempts"), ("DELETE", "")):
        result = client.simulate_request(method, f"/api/notifications/{job_id}{suffix}", headers=bearer(beta))
        assert_error(result, 404, "not_found")
    assert client.simulate_get(f"/api/notifications/{job_id}", headers=bearer(alpha)).json["status"] == "PENDING"


def test_idempotency_keys_are_scoped_per_api_key(create_api_key, make_client):
    alpha, beta = create_api_key("alpha"), create_api_key("beta")
    client = make_client()

    first = post(client, notification(idempotency_key="shared", message="from alpha"), **bearer(alpha))
    second = post(client, notification(idempotency_key="shared", message="from beta"), **bearer(beta))

    assert (first.status_code, second.status_code) == (202, 202), (first.text, second.text)
    assert first.json["job_id"] != second.json["job_id"]


def test_jobs_created_before_the_first_key_belong_to_no_key(create_api_key, make_client):
    client = make_client()
    job_id = post(client, notification()).json["job_id"]
    key = create_api_key("alpha")
    client = make_client()

    assert_error(client.simulate_get(f"/api/notifications/{job_id}", headers=bearer(key)), 404, "not_found")


def test_the_public_endpoints_stay_public_once_keys_exist(create_api_key, make_client):
    create_api_key("alpha")
    client = make_client()

    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert client.simulate_get(path).status_code == 200, path
