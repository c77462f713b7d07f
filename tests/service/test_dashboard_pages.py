"""The dashboard's pages and forms in process: the jobs list filtered and paged, a job's attempts as a timeline,
failures grouped with a bulk retry that counts before it touches anything, a destination's limits and circuit
reset, and the health charts; every page behind the admin token, every form refused from another site."""

from __future__ import annotations

import html
import json
import re
import uuid
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from falcon import testing

from actors.broker import Dispatcher, make_broker
from actors.flow import BreakerPolicy
from actors.flow import Outcome as GateOutcome
from ledger import destinations, intake, queries
from ledger.intake import NewNotification
from ledger.states import Status
from ledger.timestamps import utcnow
from service.app import create_app
from service.dashboard import jobs
from service.settings import ServiceSettings
from tests.conftest import settings_env
from tests.service.conftest import Worker, assert_error

TOKEN = "dashboard-pages-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FORM = {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}
PAGES = ["", "/jobs", f"/jobs/{uuid.uuid4()}", "/failures", "/failures/retry", "/destinations", "/health"]
ACTIONS = [f"/jobs/{uuid.uuid4()}/retry", "/failures/retry/run", "/destinations/limits", "/destinations/reset"]
RELAY, HOOK = "email:relay.example.com:25", "webhook:hooks.example.com:443"
#: An error as a hostile receiver might word it: shown as text, never run.
HOSTILE = '550 <script>document.title="pwned"</script>'


@pytest.fixture
def client(database, dispatcher, redis_server_url, queue_name, tmp_path, gate) -> testing.TestClient:
    env = settings_env(database, redis_server_url, queue_name, WJP_ADMIN_TOKEN=TOKEN, WJP_OUTBOX_DIR=str(tmp_path))
    return testing.TestClient(
        create_app(ServiceSettings.from_env(env), database=database, dispatcher=dispatcher, gate=gate)
    )


def submit(database, *, destination: str = RELAY, channel: str = "email", max_attempts: int = 1) -> str:
    request = NewNotification(
        idempotency_key=uuid.uuid4().hex, recipient="user@example.com", channel=channel, message="m",
        max_attempts=max_attempts, destination=destination,
    )  # fmt: skip
    return str(database.run(lambda conn: intake.accept(conn, request, now=utcnow(), dispatch_now=True)).job_id)


def failed(database, error: str, *, destination: str = RELAY) -> str:
    job_id = submit(database, destination=destination)
    worker = Worker(database)
    worker.fail(job_id, worker.claim(job_id), error=error)
    return job_id


def status(database, job_id: str) -> Status:
    return database.run(lambda conn: queries.get_job(conn, uuid.UUID(job_id), scope=None)).status


def listed(page: str) -> list[str]:
    return re.findall(r'<tr data-job="([^"]+)">', page)


def hidden_fields(page: str, form_id: str) -> dict[str, str]:
    form = page[page.index(f'id="{form_id}"') :]
    form = form[: form.index("</form>")]
    return {name: html.unescape(value) for name, value in re.findall(r'name="([^"]+)" value="([^"]*)"', form)}


def test_every_page_and_form_needs_the_admin_token_and_a_browser_is_sent_to_sign_in(client):
    for path in PAGES:
        page = client.simulate_get(f"/internal/dashboard{path}")
        assert page.status_code == 303 and page.headers["Location"].endswith("/internal/dashboard/login"), path
        assert_error(client.simulate_get(f"/internal/dashboard{path}", headers={"Authorization": "Bearer no"}), 401,
                     "unauthorized")  # fmt: skip
    for path in ACTIONS:
        answer = client.simulate_post(f"/internal/dashboard{path}", body="key=log", headers={**FORM, **{
            "Authorization": "Bearer wrong"}})  # fmt: skip
        assert_error(answer, 401, "unauthorized")
        no_token = client.simulate_post(f"/internal/dashboard{path}", body="key=log")
        assert_error(no_token, 401, "unauthorized")


def test_every_form_posted_from_another_site_is_refused_and_changes_nothing(client, database, gate):
    job = failed(database, "550")
    gate.admit("log", "l", lease_seconds=60, concurrency=None, rate=None)
    gate.release("log", "l", GateOutcome.TRANSIENT, breaker=BreakerPolicy(threshold=1))
    forms = {
        f"/jobs/{job}/retry": "",
        "/failures/retry/run": f"failed_before={utcnow().isoformat()}",
        "/destinations/limits": "key=log&concurrency=3",
        "/destinations/reset": "key=log",
    }
    for path, body in forms.items():
        answer = client.simulate_post(
            f"/internal/dashboard{path}", body=body, headers={**FORM, "Origin": "https://evil.example"}
        )
        assert_error(answer, 403, "forbidden")
    assert status(database, job) is Status.FAILED
    assert database.run(destinations.overrides) == {}
    assert gate.inspect(["log"])[0].circuit == "open"


def test_the_jobs_list_is_filtered_and_paged_newest_first(client, database, monkeypatch):
    monkeypatch.setattr(jobs, "PAGE_SIZE", 2)
    oldest = submit(database)
    hook = submit(database, destination=HOOK, channel="webhook")
    broken = failed(database, HOSTILE)
    newest = submit(database)

    first = client.simulate_get("/internal/dashboard/jobs", headers=AUTH)
    assert first.status_code == 200
    assert listed(first.text) == [newest, broken]
    after = parse_qs(urlsplit(html.unescape(re.search(r'id="next-page" href="([^"]+)"', first.text)[1])).query)
    second = client.simulate_get("/internal/dashboard/jobs", params={k: v[-1] for k, v in after.items()}, headers=AUTH)
    assert listed(second.text) == [hook, oldest]
    assert 'id="next-page"' not in second.text

    def filtered(**params: str) -> list[str]:
        return listed(client.simulate_get("/internal/dashboard/jobs", params=params, headers=AUTH).text)

    assert filtered(status="FAILED") == [broken]
    assert filtered(channel="webhook") == [hook]
    assert filtered(destination=RELAY, status="PENDING") == [newest, oldest]
    assert filtered(to="2000-01-01T00:00") == []
    assert filtered(**{"from": "2000-01-01T00:00:00Z", "channel": "webhook"}) == [hook]
    failed_page = client.simulate_get("/internal/dashboard/jobs", params={"status": "FAILED"}, headers=AUTH).text
    assert "<script>document.title" not in failed_page and html.escape(HOSTILE) in failed_page
    assert 'id="retry-matching"' in failed_page
    assert_error(client.simulate_get("/internal/dashboard/jobs?status=LOST", headers=AUTH), 400, "validation_error")
    assert_error(client.simulate_get("/internal/dashboard/jobs?from=yesterday", headers=AUTH), 400, "validation_error")
    assert_error(client.simulate_get("/internal/dashboard/jobs?after=x", headers=AUTH), 400, "validation_error")


def test_a_jobs_page_shows_its_fields_and_its_attempts_as_a_timeline(client, database):
    job = submit(database, max_attempts=2)
    worker = Worker(database)
    worker.retry_later(job, worker.claim(job), error="connection reset")
    worker.fail(job, worker.claim(job), error=HOSTILE)

    page = client.simulate_get(f"/internal/dashboard/jobs/{job}", headers=AUTH)

    assert page.status_code == 200
    timeline = re.findall(r'<li data-attempt="(\d+)" data-outcome="([^"]+)">', page.text)
    assert timeline == [("1", "transient_error"), ("2", "permanent_error")]
    assert html.escape(HOSTILE) in page.text and "<script>document" not in page.text
    assert f'data-job="{job}">Retry</button>' in page.text
    assert_error(client.simulate_get(f"/internal/dashboard/jobs/{uuid.uuid4()}", headers=AUTH), 404, "not_found")
    assert_error(client.simulate_get("/internal/dashboard/jobs/nope", headers=AUTH), 404, "not_found")


def test_a_jobs_retry_button_queues_it_again_and_comes_back_to_the_page_it_was_on(client, database, redis_messages):
    job = failed(database, "550")
    back = f"/internal/dashboard/jobs/{job}"

    answer = client.simulate_post(f"{back}/retry", body=urlencode({"back": back}), headers=FORM)
    elsewhere = client.simulate_post(f"{back}/retry", body="back=https://evil.example/", headers=FORM)
    split = client.simulate_post(f"{back}/retry", body=urlencode({"back": f"{back}\r\nSet-Cookie: x=1"}), headers=FORM)

    assert answer.status_code == 303 and answer.headers["Location"] == f"{back}?notice=retried&job={job}"
    assert status(database, job) is Status.PENDING and f"{job}.2" in redis_messages.queued()
    assert elsewhere.headers["Location"] == f"/internal/dashboard?notice=not_failed&job={job}"
    assert split.headers["Location"] == f"/internal/dashboard?notice=not_failed&job={job}" and "x" not in split.cookies


def test_failures_are_grouped_and_a_bulk_retry_says_how_many_it_touches_before_touching_them(
    client, database, redis_messages
):
    relay_550 = [failed(database, HOSTILE) for _ in range(2)]
    other = [failed(database, "421 try later"), failed(database, HOSTILE, destination=HOOK)]

    groups = client.simulate_get("/internal/dashboard/failures", headers=AUTH).text
    rows = re.findall(r'<tr data-group="\d+" data-destination="([^"]+)">.*?<td class="jobs"><a[^>]*>(\d+)</a>', groups)
    assert sorted(rows) == sorted([(RELAY, "2"), (RELAY, "1"), (HOOK, "1")])
    assert "<script>document" not in groups

    # The group's button leads to a count, and nothing has changed yet.
    confirm = client.simulate_post(
        "/internal/dashboard/failures/retry",
        body=urlencode({"destination": RELAY, "error": json.dumps(HOSTILE)}),
        headers=FORM,
    )
    assert re.search(r'id="retry-count" data-count="(\d+)"', confirm.text)[1] == "2"
    assert all(status(database, job) is Status.FAILED for job in relay_550 + other)
    # A job failing after the count is not among those retried.
    late = failed(database, HOSTILE)

    done = client.simulate_post(
        "/internal/dashboard/failures/retry/run",
        body=urlencode(hidden_fields(confirm.text, "confirm-retry")),
        headers=FORM,
    )

    assert done.status_code == 303 and done.headers["Location"] == "/internal/dashboard/failures?retried=2"
    assert [status(database, job) for job in relay_550] == [Status.PENDING] * 2
    assert all(status(database, job) is Status.FAILED for job in [*other, late])
    assert {f"{job}.2" for job in relay_550} <= set(redis_messages.queued())
    # By the list's filters (a GET from the jobs list), and a filter that matches nothing.
    by_filter = client.simulate_get("/internal/dashboard/failures/retry", params={"destination": HOOK}, headers=AUTH)
    assert re.search(r'data-count="(\d+)"', by_filter.text)[1] == "1"
    none = client.simulate_get("/internal/dashboard/failures/retry", params={"channel": "sms"}, headers=AUTH)
    assert 'data-count="0"' in none.text and 'id="confirm-retry"' not in none.text
    for bad in ({"error": "not json"}, {"error": "42"}, {"from": "soon"}):
        answer = client.simulate_get("/internal/dashboard/failures/retry", params=bad, headers=AUTH)
        assert_error(answer, 400, "validation_error")
    unpinned = client.simulate_post("/internal/dashboard/failures/retry/run", body="destination=x", headers=FORM)
    assert_error(unpinned, 400, "validation_error")


def test_an_operator_sets_a_destinations_limits_and_resets_its_circuit(client, database, gate):
    submit(database, destination="log", channel="log")
    gate.admit("log", "l", lease_seconds=60, concurrency=None, rate=None)
    gate.release("log", "l", GateOutcome.TRANSIENT, breaker=BreakerPolicy(threshold=1))
    page = client.simulate_get("/internal/dashboard/destinations", headers=AUTH).text
    assert 'data-destination="log">Reset circuit</button>' in page

    limits = client.simulate_post(
        "/internal/dashboard/destinations/limits", body="key=log&concurrency=3&rate=0.5", headers=FORM
    )
    assert limits.status_code == 303
    assert database.run(destinations.overrides)["log"] == destinations.Limits(3, 0.5)
    kept = client.simulate_post("/internal/dashboard/destinations/limits", body="key=log&rate=default", headers=FORM)
    assert kept.status_code == 303
    assert database.run(destinations.overrides)["log"] == destinations.Limits(3, None)
    bad = client.simulate_post("/internal/dashboard/destinations/limits", body="key=log&concurrency=many", headers=FORM)
    assert_error(bad, 400, "validation_error")
    assert_error(client.simulate_post("/internal/dashboard/destinations/reset", body="key=", headers=FORM), 400,
                 "validation_error")  # fmt: skip

    reset = client.simulate_post("/internal/dashboard/destinations/reset", body="key=log", headers=FORM)

    assert reset.status_code == 303 and "notice=reset" in reset.headers["Location"]
    assert gate.inspect(["log"])[0].circuit == "closed"
    after = client.simulate_get(reset.headers["Location"], headers=AUTH).text
    assert "The circuit of log is closed" in after and 'data-destination="log">Reset circuit' not in after


def test_the_health_page_charts_the_last_hour_as_svg_without_script(client, database):
    worker = Worker(database)
    for _ in range(3):
        job = submit(database)
        worker.succeed(job, worker.claim(job))
    failed(database, "550")

    page = client.simulate_get("/internal/dashboard/health", headers=AUTH)

    assert page.status_code == 200 and "<script" not in page.text
    assert 'data-succeeded="3"' in page.text and 'data-failed="1"' in page.text
    assert '<svg id="throughput-chart"' in page.text and '<svg id="latency-chart"' in page.text
    assert re.search(r'id="latency-p50">[^<]*\d', page.text)
    bars = re.findall(r'<rect x="[^"]+" y="[^"]+" width="[^"]+" height="[^"]+" fill="#2a7"', page.text)
    assert len(bars) >= 1


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_without_redis_the_pages_still_show_and_a_circuit_reset_answers_503(database, client_for, private_redis,
                                                                            queue_name):  # fmt: skip
    client = client_for(database, Dispatcher(make_broker(private_redis.url, timeout=2), queue_name),
                        WJP_ADMIN_TOKEN=TOKEN)  # fmt: skip
    failed(database, "550")
    private_redis.stop()

    destinations_page = client.simulate_get("/internal/dashboard/destinations", headers=AUTH)
    reset = client.simulate_post("/internal/dashboard/destinations/reset", body="key=log", headers=FORM)

    assert destinations_page.status_code == 200 and "Redis cannot be reached" in destinations_page.text
    assert_error(reset, 503, "redis_unavailable")
    for path in ("/jobs", "/failures", "/health"):
        assert client.simulate_get(f"/internal/dashboard{path}", headers=AUTH).status_code == 200, path


def test_a_jobs_page_shows_its_callback_and_where_its_delivery_stands(client, database):
    callback_url = "https://hooks.example/done?<b>"
    request = NewNotification(
        idempotency_key=uuid.uuid4().hex, recipient="user@example.com", channel="email", message="hi",
        max_attempts=1, destination=RELAY, callback_url=callback_url, callback_destination="webhook:hooks.example:443",
    )  # fmt: skip
    job = str(database.run(lambda conn: intake.accept(conn, request, now=utcnow(), dispatch_now=True)).job_id)
    before = client.simulate_get(f"/internal/dashboard/jobs/{job}", headers=AUTH).text
    worker = Worker(database)
    worker.fail(job, worker.claim(job), error="550 no such user")
    after = client.simulate_get(f"/internal/dashboard/jobs/{job}", headers=AUTH).text
    plain = client.simulate_get(f"/internal/dashboard/jobs/{submit(database)}", headers=AUTH).text

    assert '<section id="callback">' in before and html.escape(callback_url) in before and "<b>" not in before
    assert "<dd>waiting</dd>" in before
    assert "<dd>FAILED</dd>" in after and "<dd>delivering</dd>" in after, "armed by the failure, claimed for its worker"
    assert 'id="callback"' not in plain
