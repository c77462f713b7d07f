"""Dashboard sessions over real HTTP against a real ASGI server and real Redis: a fresh random session at every
sign-in, kept on the server for 12 h, ended by sign-out, an expired one refused, a changed admin token ending them
all, and a flood of wrong tokens from one client address answered 429 while another address still signs in."""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from actors.broker import Dispatcher, make_broker
from service.access import SESSION_COOKIE
from service.app import create_app
from service.dashboard.sign_in import SESSION_LIFETIME
from service.settings import ServiceSettings
from tests.asgi_server import AsgiServer
from tests.conftest import free_port, settings_env
from tests.service.conftest import assert_error

TOKEN = "dashboard-sessions-test-token"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
#: The contract's sign-in limit: after 10 failed sign-ins from one address within a minute, 429 for the rest of it.
MAX_FAILED_SIGN_INS, FAILED_SIGN_IN_WINDOW = 10, 60


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def session(self) -> str | None:
        """The session cookie this answer sets, '' when it clears it, None when it leaves it alone."""
        for header in self.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            if name == SESSION_COOKIE:
                value = rest.split(";", 1)[0].strip('"')
                return "" if "max-age=0" in header.lower() or not value else value
        return None


@dataclass
class Site:
    port: int
    redis: redis.Redis
    prefix: str

    def request(self, method: str, path: str, body: str = "", source: str = "127.0.0.1", **headers: str) -> Answer:
        """One request over a new connection from the client address `source`."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30, source_address=(source, 0))
        try:
            conn.request(method, path, body=body.encode() or None, headers=headers)
            answer = conn.getresponse()
            return Answer(answer.status, answer.headers, answer.read())
        finally:
            conn.close()

    def sign_in(self, token: str = TOKEN, source: str = "127.0.0.1") -> Answer:
        return self.request("POST", "/internal/dashboard/login", f"token={token}", source, **FORM)

    def dashboard(self, session: str) -> Answer:
        return self.request("GET", "/internal/dashboard", Cookie=f"{SESSION_COOKIE}={session}")

    def session_key(self, session: str) -> str:
        return f"{self.prefix}session:{hashlib.sha256(session.encode()).hexdigest()}"


def serve(app) -> tuple[AsgiServer, int]:
    server = AsgiServer(app)
    return server, server.port


@pytest.fixture
def site(database, dispatcher, redis_server_url: str, queue_name: str, tmp_path) -> Iterator[Site]:
    """The app with an admin token, served by a real ASGI server; its dashboard keys are deleted afterwards."""
    env = settings_env(database, redis_server_url, queue_name, WJP_ADMIN_TOKEN=TOKEN, WJP_OUTBOX_DIR=str(tmp_path))
    server, port = serve(create_app(ServiceSettings.from_env(env), database=database, dispatcher=dispatcher))
    client = redis.Redis.from_url(redis_server_url)
    prefix = f"wjp:dashboard:{queue_name}:"
    yield Site(port, client, prefix)
    server.stop()
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_a_real_sign_in_gives_a_cookie_that_opens_the_dashboard_and_each_sign_in_a_new_one(site):
    first, second = site.sign_in(), site.sign_in()

    assert first.status == second.status == 303
    assert first.session and second.session and first.session != second.session
    assert TOKEN not in first.session
    assert site.dashboard(first.session).status == 200
    assert site.dashboard(second.session).status == 200


def test_a_session_lives_12_hours_on_the_server(site):
    session = site.sign_in().session

    assert session is not None
    assert SESSION_LIFETIME.total_seconds() - 60 < site.redis.ttl(site.session_key(session)) <= 12 * 3600


def test_signing_out_ends_the_session_on_the_server_and_clears_the_cookie(site):
    session = site.sign_in().session
    other = site.sign_in().session
    assert session and site.dashboard(session).status == 200

    out = site.request("POST", "/internal/dashboard/logout", Cookie=f"{SESSION_COOKIE}={session}", **FORM)

    assert out.status == 303 and out.headers["Location"].endswith("/internal/dashboard/login")
    assert out.session == ""
    assert not site.redis.exists(site.session_key(session))
    # The old cookie, replayed: back to the sign-in page, and 401 where a bearer token is expected.
    again = site.dashboard(session)
    assert again.status == 303 and again.headers["Location"].endswith("/internal/dashboard/login")
    retry = site.request("POST", "/internal/dashboard/jobs/0/retry", Cookie=f"{SESSION_COOKIE}={session}", **FORM)
    assert retry.status == 401
    assert other and site.dashboard(other).status == 200


def test_a_session_whose_server_record_expired_no_longer_opens_the_dashboard(site):
    session = site.sign_in().session
    assert session and site.dashboard(session).status == 200

    site.redis.pexpire(site.session_key(session), 1)
    while site.redis.exists(site.session_key(session)):
        pass

    assert site.dashboard(session).status == 303


def test_changing_the_admin_token_ends_every_session(
    site, database, dispatcher, redis_server_url, queue_name, tmp_path
):
    session = site.sign_in().session
    env = settings_env(
        database, redis_server_url, queue_name, WJP_ADMIN_TOKEN=TOKEN + "-new", WJP_OUTBOX_DIR=str(tmp_path)
    )
    server, port = serve(create_app(ServiceSettings.from_env(env), database=database, dispatcher=dispatcher))
    try:
        renewed = Site(port, site.redis, site.prefix)
        assert site.redis.exists(site.session_key(session))
        assert renewed.dashboard(session).status == 303
    finally:
        server.stop()


def test_a_flood_of_wrong_tokens_from_one_address_is_429_from_the_11th_while_another_address_signs_in(site):
    answers = [site.sign_in(f"guess-{n}") for n in range(MAX_FAILED_SIGN_INS + 2)]

    assert [a.status for a in answers[:MAX_FAILED_SIGN_INS]] == [303] * MAX_FAILED_SIGN_INS
    assert all("failed" in a.headers["Location"] and a.session is None for a in answers[:MAX_FAILED_SIGN_INS])
    for refused in [*answers[MAX_FAILED_SIGN_INS:], site.sign_in()]:  # even the right token, for the rest of it
        assert refused.status == 429 and refused.session is None
        body = json.loads(refused.body)
        assert body["error"] == "rate_limited" and set(body) == {"error", "message", "details"}
        assert 1 <= int(refused.headers["Retry-After"]) <= FAILED_SIGN_IN_WINDOW
    elsewhere = site.sign_in(source="127.0.0.2")
    assert elsewhere.status == 303 and elsewhere.session
    assert site.dashboard(elsewhere.session).status == 200


def test_a_sign_out_posted_from_another_site_is_refused(site):
    session = site.sign_in().session

    out = site.request(
        "POST",
        "/internal/dashboard/logout",
        Cookie=f"{SESSION_COOKIE}={session}",
        Origin="https://evil.example",
        **FORM,
    )

    assert out.status == 403
    assert session and site.dashboard(session).status == 200


def test_with_redis_down_sign_in_is_a_clean_503_and_the_bearer_token_still_opens_the_dashboard(
    client_for, database, queue_name
):
    down = Dispatcher(make_broker(f"redis://127.0.0.1:{free_port()}/0", timeout=2), queue_name)
    client = client_for(database, down, WJP_ADMIN_TOKEN=TOKEN)

    result = client.simulate_post("/internal/dashboard/login", body=f"token={TOKEN}", headers=FORM)

    assert_error(result, 503, "sessions_unavailable")
    assert SESSION_COOKIE not in result.cookies
    bearer = client.simulate_get("/internal/dashboard", headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200
