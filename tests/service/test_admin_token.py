"""The admin token (WJP_ADMIN_TOKEN) on /internal/* and /metrics: 401 without it or with a wrong one, compared in
constant time, decided on the route (so no spelling of a path slips past), and traded for a dashboard session."""

from __future__ import annotations

import uuid

import pytest

import service.access
from tests.service.conftest import assert_error

TOKEN = "s3cret-admin-token"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def guarded(make_client):
    return make_client(WJP_ADMIN_TOKEN=TOKEN)


@pytest.mark.parametrize("path", ["/internal/queue/stats", "/metrics"])
@pytest.mark.parametrize(
    "authorization, status",
    [(None, 401), (f"Bearer {TOKEN}x", 401), (f"Bearer {TOKEN}", 200)],
    ids=["without", "wrong", "right"],
)
def test_stats_and_metrics_are_401_without_or_with_a_wrong_token_and_200_with_the_right_one(
    guarded, path, authorization, status
):
    headers = {} if authorization is None else {"Authorization": authorization}

    result = guarded.simulate_get(path, headers=headers)

    if status == 401:
        assert_error(result, 401, "unauthorized")
        assert result.headers["www-authenticate"].startswith("Bearer")
    else:
        assert result.status_code == 200, result.text


def test_the_token_is_compared_in_constant_time(guarded, monkeypatch):
    compared: list[tuple[bytes, bytes]] = []
    real = service.access.hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(service.access.hmac, "compare_digest", spy)

    guarded.simulate_get("/internal/queue/stats", headers={"Authorization": "Bearer guess"})

    assert compared == [(b"guess", TOKEN.encode())]


@pytest.mark.parametrize("path", ["//internal/queue/stats", "///metrics", "/internal/queue/stats/", "//metrics/"])
def test_no_spelling_of_an_operator_path_slips_past_the_token(guarded, path):
    assert_error(guarded.simulate_get(path), 401, "unauthorized")


def test_an_operator_write_spelled_with_a_doubled_slash_still_needs_the_token(guarded):
    assert_error(guarded.simulate_post(f"//internal/notifications/{uuid.uuid4()}/retry"), 401, "unauthorized")


def test_a_browser_without_a_session_is_sent_from_the_dashboard_to_sign_in(guarded):
    result = guarded.simulate_get("/internal/dashboard")

    assert result.status_code == 303
    assert result.headers["location"].endswith("/internal/dashboard/login")
    assert guarded.simulate_get("/internal/dashboard/login").status_code == 200


def test_a_wrong_bearer_token_on_the_dashboard_is_a_401_not_a_redirect(guarded):
    result = guarded.simulate_get("/internal/dashboard", headers={"Authorization": "Bearer no"})

    assert_error(result, 401, "unauthorized")


def test_signing_in_sets_a_strict_http_only_session_cookie_for_the_dashboard_only(guarded):
    result = guarded.simulate_post("/internal/dashboard/login", body=f"token={TOKEN}", headers=FORM)

    assert result.status_code == 303 and result.headers["location"].endswith("/internal/dashboard")
    cookie = result.cookies[service.access.SESSION_COOKIE]
    assert cookie.http_only and cookie.same_site == "Strict" and cookie.path == "/internal/dashboard"
    assert TOKEN not in cookie.value
    session = {"Cookie": f"{service.access.SESSION_COOKIE}={cookie.value}"}
    assert guarded.simulate_get("/internal/dashboard", headers=session).status_code == 200
    # The cookie opens the dashboard, not the JSON operator API
    assert_error(guarded.simulate_get("/internal/queue/stats", headers=session), 401, "unauthorized")


def test_a_wrong_token_at_sign_in_sets_no_cookie_and_says_so(guarded):
    result = guarded.simulate_post("/internal/dashboard/login", body="token=guess", headers=FORM)

    assert result.status_code == 303 and "failed" in result.headers["location"]
    assert service.access.SESSION_COOKIE not in result.cookies
    forged = {"Cookie": f"{service.access.SESSION_COOKIE}=guess"}
    assert guarded.simulate_get("/internal/dashboard", headers=forged).status_code == 303


def test_a_dashboard_form_posted_from_another_site_is_refused(client):
    result = client.simulate_post(
        f"/internal/dashboard/jobs/{uuid.uuid4()}/retry",
        body="q=",
        headers={**FORM, "Origin": "https://evil.example", "Host": "127.0.0.1:8000"},
    )

    assert_error(result, 403, "forbidden")


def test_without_an_admin_token_the_sign_in_page_leads_straight_to_the_dashboard(client):
    result = client.simulate_get("/internal/dashboard/login")

    assert result.status_code == 303 and result.headers["location"].endswith("/internal/dashboard")
    assert client.simulate_get("/internal/dashboard").status_code == 200
