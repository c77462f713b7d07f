"""Producer API keys end to end: made by the ledger and by the real `wjp api-key` command, stored hashed, listed
and revoked; once one exists /api/* needs one, and each key sees only its own jobs and idempotency keys."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import falcon
import falcon.asgi
import pytest
from falcon import testing
from sqlalchemy import Engine, event, select

from ledger import api_keys
from ledger.database import Database
from ledger.schema import api_keys as api_keys_table
from ledger.timestamps import utcnow
from service.access import KEY_CACHE_SECONDS, ApiKeyMiddleware
from service.offload import Offload
from tests.e2e.conftest import process_env, run_wjp
from tests.service.conftest import assert_error, notification, post


class Scope:
    """A producer route that only shows the scope the middleware gave the request."""

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"scope": req.context.scope}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_key(database: Database, name: str) -> str:
    return database.run(lambda conn: api_keys.create(conn, name, now=utcnow()), transaction=True)[1]


def wjp(database: Database, *args: str):
    env = process_env(DATABASE_URL=database.engine.url.render_as_string(hide_password=False))
    return run_wjp(list(args), env)


def test_a_key_is_stored_only_as_its_sha256_digest(database):
    key = new_key(database, "alpha")

    row = database.run(lambda conn: conn.execute(select(api_keys_table)).one())
    assert key.startswith(api_keys.PREFIX) and len(key) > 40
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in [str(value) for value in row]


def test_wjp_api_key_create_prints_the_key_alone_on_its_last_line_and_it_opens_the_api(database, make_client):
    result = wjp(database, "api-key", "create", "billing")

    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith(api_keys.PREFIX) and " " not in key
    client = make_client()
    assert post(client, notification(), **bearer(key)).status_code == 202
    assert_error(post(client, notification()), 401, "unauthorized")


def test_wjp_api_key_create_refuses_a_name_in_use_in_one_line(database):
    assert wjp(database, "api-key", "create", "billing").returncode == 0

    again = wjp(database, "api-key", "create", "billing")

    assert again.returncode == 1
    assert again.stderr.strip().count("\n") == 0 and "billing" in again.stderr and "Traceback" not in again.stderr


def test_wjp_api_key_list_shows_names_and_revocations_but_never_a_key(database):
    alpha, beta = new_key(database, "alpha"), new_key(database, "beta")
    assert wjp(database, "api-key", "revoke", "beta").returncode == 0

    listing = wjp(database, "api-key", "list")

    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line for line in listing.stdout.strip().splitlines()[1:]}
    assert set(lines) == {"alpha", "beta"}
    assert lines["alpha"].rstrip().endswith("-") and not lines["beta"].rstrip().endswith("-")
    assert alpha not in listing.stdout and beta not in listing.stdout


def test_wjp_api_key_revoke_stops_that_key_only(database, make_client):
    alpha, beta = new_key(database, "alpha"), new_key(database, "beta")

    revoked = wjp(database, "api-key", "revoke", "alpha")

    assert revoked.returncode == 0, revoked.stderr
    client = make_client()
    assert_error(post(client, notification(), **bearer(alpha)), 401, "unauthorized")
    assert post(client, notification(), **bearer(beta)).status_code == 202
    unknown = wjp(database, "api-key", "revoke", "alpha")
    assert unknown.returncode == 1 and "alpha" in unknown.stderr


def test_a_revoked_key_stops_working_in_a_running_api(database, make_client):
    key = new_key(database, "alpha")
    client = make_client()
    assert post(client, notification(), **bearer(key)).status_code == 202

    database.run(lambda conn: api_keys.revoke(conn, "alpha", now=utcnow()), transaction=True)
    # A generous wait: it fails only if the key never stops working; how soon is pinned by the test below.
    deadline = time.monotonic() + 30 * KEY_CACHE_SECONDS
    while post(client, notification(), **bearer(key)).status_code != 401:
        assert time.monotonic() < deadline, "the revoked key kept working"
        time.sleep(0.1)


def test_a_revoked_key_works_until_its_cached_answer_lapses_and_not_one_request_longer(database):
    now = [1000.0]
    app = falcon.asgi.App(middleware=[ApiKeyMiddleware(database, Offload(1), clock=lambda: now[0])])
    app.add_route("/api/scope", Scope())
    client = testing.TestClient(app)
    key = new_key(database, "alpha")
    assert client.simulate_get("/api/scope", headers=bearer(key)).status_code == 200

    database.run(lambda conn: api_keys.revoke(conn, "alpha", now=utcnow()), transaction=True)
    now[0] += KEY_CACHE_SECONDS / 2
    assert client.simulate_get("/api/scope", headers=bearer(key)).status_code == 200  # the cached answer
    now[0] += KEY_CACHE_SECONDS / 2
    assert client.simulate_get("/api/scope", headers=bearer(key)).status_code == 401


class HeldOffload(Offload):
    """Counts the calls that reach the ledger and holds each until `release` is set."""

    def __init__(self) -> None:
        super().__init__(4)
        self.calls = 0
        self.release = threading.Event()

    async def __call__(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1

        def held() -> Any:
            self.release.wait(30)
            return fn(*args, **kwargs)

        return await super().__call__(held)


def test_requests_that_find_the_cached_answer_lapsed_together_share_one_ledger_read(database):
    key = new_key(database, "alpha")
    producer = database.run(lambda conn: api_keys.producer_of(conn, key))
    offload = HeldOffload()
    app = falcon.asgi.App(middleware=[ApiKeyMiddleware(database, offload)])
    app.add_route("/api/scope", Scope())

    async def twenty_at_once() -> list[Any]:
        async with testing.ASGIConductor(app) as conductor:
            requests = [
                asyncio.ensure_future(conductor.simulate_get("/api/scope", headers=bearer(key))) for _ in range(20)
            ]
            for _ in range(100):  # each request runs up to its wait for the ledger
                await asyncio.sleep(0)
            offload.release.set()
            return await asyncio.gather(*requests)

    results = asyncio.run(twenty_at_once())

    assert [(r.status_code, r.json) for r in results] == [(200, {"scope": producer.scope})] * 20
    assert offload.calls == 2  # whether any key exists, and this key's producer: once each


def test_revoking_every_key_keeps_the_producer_api_closed(database, make_client):
    new_key(database, "alpha")
    database.run(lambda conn: api_keys.revoke(conn, "alpha", now=utcnow()), transaction=True)

    assert_error(post(make_client(), notification()), 401, "unauthorized")


def test_without_a_key_with_a_wrong_key_or_with_the_admin_token_the_producer_api_is_401(database, make_client):
    new_key(database, "alpha")
    client = make_client(WJP_ADMIN_TOKEN="s3cret")

    for headers in ({}, bearer("wjp_not-a-key"), bearer("s3cret"), {"Authorization": "Basic YWxwaGE6"}):
        result = post(client, notification(), **headers)
        assert_error(result, 401, "unauthorized")
        assert result.headers["www-authenticate"].startswith("Bearer")


def test_one_key_cannot_see_or_cancel_the_other_keys_job(database, make_client):
    alpha, beta = new_key(database, "alpha"), new_key(database, "beta")
    client = make_client()
    job_id = post(client, notification(), **bearer(alpha)).json["job_id"]

    for method, suffix in (("GET", ""), ("GET", "/attempts"), ("DELETE", "")):
        answer = client.simulate_request(method, f"/api/notifications/{job_id}{suffix}", headers=bearer(beta))
        assert_error(answer, 404, "not_found")
    assert client.simulate_get(f"/api/notifications/{job_id}", headers=bearer(alpha)).json["status"] == "PENDING"


def test_the_same_idempotency_key_under_two_keys_gives_two_jobs_each_replayed_within_its_key(database, make_client):
    alpha, beta = new_key(database, "alpha"), new_key(database, "beta")
    client = make_client()
    body = notification(idempotency_key="order-42")

    first, second = post(client, body, **bearer(alpha)), post(client, body, **bearer(beta))
    replay = post(client, body, **bearer(alpha))

    assert (first.status_code, second.status_code, replay.status_code) == (202, 202, 200)
    assert first.json["job_id"] != second.json["job_id"]
    assert replay.json["job_id"] == first.json["job_id"]


@contextmanager
def statements_run() -> Iterator[list[tuple[str, Any]]]:
    """Every statement sent to any engine in the block, with its parameters."""
    statements: list[tuple[str, Any]] = []

    def record(conn, cursor, statement, parameters, *args) -> None:
        statements.append((statement, parameters))

    # On every engine: the ledger keeps a second pool for autocommit statements on PostgreSQL.
    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def plan(database: Database, statement: str, parameters: Any) -> str:
    """How the database would run `statement`, with sequential scans ruled out on PostgreSQL: a tiny table is
    cheaper to scan, and the question is whether an index can answer the statement at all."""

    def explain(conn) -> str:
        if database.dialect == "postgresql":
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            rows = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).all()
        else:
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
        return "\n".join(str(row[-1]) for row in rows)

    return database.run(explain, transaction=True)


def test_a_key_costs_one_lookup_by_the_index_of_digests_and_then_none_while_it_is_cached(database, make_client):
    key = new_key(database, "alpha")
    client = make_client()

    with statements_run() as first:
        job_id = post(client, notification(), **bearer(key)).json["job_id"]
    with statements_run() as cached:
        assert client.simulate_get(f"/api/notifications/{job_id}", headers=bearer(key)).status_code == 200

    # The first request asks whether any key exists (one row at most) and looks this key up once, by its digest
    about_keys = [(sql, parameters) for sql, parameters in first if "api_keys" in sql]
    [(lookup, parameters)] = [(sql, parameters) for sql, parameters in about_keys if "key_hash" in sql]
    assert len(about_keys) == 2, about_keys
    how = plan(database, lookup, parameters)
    if database.dialect == "postgresql":
        assert "Index Scan using uq_api_keys_key_hash" in how and "Index Cond: ((key_hash)" in how, how
    else:
        assert "USING INDEX" in how and "(key_hash=?)" in how, how
    # The next one, within the cache time, looks up nothing about keys
    assert any("FROM jobs" in sql for sql, _ in cached), cached
    assert not [sql for sql, _ in cached if "api_keys" in sql], cached


def test_no_key_or_token_ever_appears_in_the_logs(database, make_client, caplog):
    caplog.set_level(logging.DEBUG)
    key = new_key(database, "alpha")
    client = make_client(WJP_ADMIN_TOKEN="adm1n-t0ken")

    post(client, notification(), **bearer(key))
    post(client, notification(channel="pigeon"), **bearer(key))
    post(client, notification(), **bearer(key + "x"))
    client.simulate_get("/internal/queue/stats", headers=bearer("adm1n-t0ken"))
    client.simulate_get("/internal/queue/stats", headers=bearer("adm1n-t0kem"))
    client.simulate_post(
        "/internal/dashboard/login",
        body="token=adm1n-t0ken",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert caplog.records, "expected the requests to log something"
    for secret in (key, "adm1n-t0ken", "adm1n-t0kem"):
        assert secret not in caplog.text


@pytest.mark.parametrize("name", ["", "two words", "x" * 101, "-leading-dash", "naïve"])
def test_wjp_api_key_create_refuses_a_name_that_is_not_a_plain_identifier(database, name):
    result = wjp(database, "api-key", "create", name)

    assert result.returncode == 2 and "Traceback" not in result.stderr
