"""The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium) against
the app served by a real ASGI server: signing in, the counts, a failure's error, the retry button, lookup by id and
by idempotency key, and the page refreshing itself; then the other pages: the jobs list filtered, a bulk retry
through its confirmation, a circuit reset, a job's timeline and the health charts, checked as a person would see
them; and every page read, and a bulk retry made, with JavaScript off."""

from __future__ import annotations

import html
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from falcon import testing
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from actors.flow import BreakerPolicy, Gate
from actors.flow import Outcome as GateOutcome
from ledger import claims, destinations, intake, queries, transitions
from ledger.database import Database
from ledger.destinations import Limits
from ledger.intake import NewNotification
from ledger.states import Outcome, Status
from ledger.timestamps import utcnow
from service.app import create_app
from service.settings import ServiceSettings
from tests import browser as browsers
from tests.conftest import settings_env, unavailable

TOKEN = "dashboard-test-token"
#: An error as a hostile webhook receiver might word it: it must show as text, never run.
HOSTILE_ERROR = '550 5.1.1 user unknown <script>document.title = "pwned"</script>'


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    reason = browsers.missing()
    if reason is not None:
        unavailable(reason)
    with browsers.chromium(tmp_path / "chromium") as driver:
        yield driver


@pytest.fixture
def browser_without_javascript(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    reason = browsers.missing()
    if reason is not None:
        unavailable(reason)
    with browsers.chromium(tmp_path / "chromium") as driver:
        driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
        # A page's own script must not run in this tab.
        driver.get("data:text/html,<title>before</title><script>document.title = 'ran'</script>")
        assert driver.title == "before"
        yield driver


@pytest.fixture
def base_url(database: Database, dispatcher, redis_server_url: str, queue_name: str, tmp_path, gate) -> Iterator[str]:
    """The app, with an admin token, served over HTTP by a real WSGI server on a free port."""
    env = settings_env(database, redis_server_url, queue_name, WJP_ADMIN_TOKEN=TOKEN, WJP_OUTBOX_DIR=str(tmp_path))
    app = create_app(ServiceSettings.from_env(env), database=database, dispatcher=dispatcher, gate=gate)
    with browsers.served(app) as url:
        yield url


def record(database: Database, key: str | None = None, *, destination: str = "") -> uuid.UUID:
    request = NewNotification(
        idempotency_key=key or uuid.uuid4().hex,
        recipient="user@example.com",
        channel="email",
        message="Halo dari sistem worker!",
        max_attempts=1,
        destination=destination,
    )
    return database.run(lambda conn: intake.accept(conn, request, now=utcnow(), dispatch_now=True)).job_id


def finish(database: Database, job_id: uuid.UUID, error: str | None) -> None:
    def run(conn) -> None:
        assert claims.claim(conn, job_id, 1, now=utcnow(), worker="test") is not None
        if error is None:
            assert claims.succeed(conn, job_id, 1, now=utcnow())
        else:
            assert transitions.fail(conn, job_id, 1, now=utcnow(), outcome=Outcome.PERMANENT_ERROR, error=error)

    database.run(run, transaction=True)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"the page did not show {what} within {timeout}s")
        time.sleep(0.2)


def test_an_operator_signs_in_sees_the_queue_retries_a_failure_and_finds_jobs_in_a_real_browser(
    browser, base_url, database, redis_messages
):
    waiting = record(database, key="order-1001")
    finish(database, record(database), None)
    broken = record(database)
    finish(database, broken, HOSTILE_ERROR)

    # The page swaps its live part every few seconds, so an element found a moment ago may be gone: read the page
    # in one script call, and click by selector, trying again when a refresh replaced the element in between.
    def read(selector: str) -> str | None:
        return browser.execute_script(
            "const found = document.querySelector(arguments[0]); return found ? found.innerText : null;", selector
        )

    def click(selector: str) -> None:
        for _ in range(5):
            try:
                browser.find_element(By.CSS_SELECTOR, selector).click()
                return
            except StaleElementReferenceException:
                continue
        raise AssertionError(f"{selector} kept being replaced before it could be clicked")

    def count(status: str) -> str | None:
        return read(f'#counts [data-status="{status}"] .value')

    # Opening the dashboard without a session leads to the sign-in page; the admin token opens it.
    browser.get(f"{base_url}/internal/dashboard")
    assert browser.current_url.endswith("/internal/dashboard/login")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_until(lambda: browser.current_url.endswith("/internal/dashboard"), "the dashboard after signing in")

    # Counts by status, the oldest due job, throughput, and the failure with its error shown as plain text.
    assert (count("pending"), count("success"), count("failed"), count("processing")) == ("1", "1", "1", "0")
    assert "Oldest due job has waited" in read("#oldest-due")
    assert "2 jobs" in read("#throughput")
    assert read(f'#failure-list tr[data-job="{broken}"] td.error') == HOSTILE_ERROR
    assert browser.title != "pwned"

    # Lookup by job id, then by idempotency key.
    for text in (str(waiting), "order-1001"):
        box = browser.find_element(By.ID, "q")
        box.clear()
        box.send_keys(text)
        click("#lookup button")
        # By its heading: the previous lookup's page also has results, until the browser has left it.
        wait_until(lambda text=text: text in (read("#lookup-results h2") or ""), f"results for {text}")
        assert read(f'#found tr[data-job="{waiting}"] td.status') == "PENDING"

    # The retry button sends the failed job again.
    click(f'#failure-list button.retry[data-job="{broken}"]')
    wait_until(lambda: read("#notice") is not None, "a notice after the retry")
    assert "queued again" in read("#notice")
    assert database.run(lambda conn: queries.get_job(conn, broken, scope=None)).status is Status.PENDING
    assert f"{broken}.2" in redis_messages.queued()
    assert (count("pending"), count("failed")) == ("2", "0")

    # Left open, the page refreshes itself: a new job shows up without a reload.
    browser.execute_script("window.stillTheSamePage = true")
    record(database)
    wait_until(lambda: count("pending") == "3", "the new job (3 pending)")
    assert browser.execute_script("return window.stillTheSamePage") is True

    # Nothing the page does is blocked by its own Content-Security-Policy.
    problems = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not [message for message in problems if "Content Security Policy" in message], problems


#: A destination as a channel of an operator's own (WJP_CHANNEL_MODULES) might name it from a hostile recipient.
HOSTILE_DESTINATION = 'custom:<img src=x onerror="document.title=1">:443'


def test_the_destinations_panel_shows_limits_circuits_and_waiting_jobs_as_escaped_text(
    database, dispatcher, redis_server_url, queue_name, tmp_path
):
    client = redis.Redis.from_url(redis_server_url)
    gate = Gate(client, prefix=f"wjp:test-flow-{uuid.uuid4().hex[:10]}:")
    database.run(lambda conn: conn.exec_driver_sql("DELETE FROM destinations"), transaction=True)
    try:
        request = NewNotification(
            idempotency_key=uuid.uuid4().hex, recipient="r", channel="log", message="m", max_attempts=1,
            destination=HOSTILE_DESTINATION,
        )  # fmt: skip
        database.run(lambda conn: intake.accept(conn, request, now=utcnow(), dispatch_now=True))
        database.run(lambda conn: destinations.set_limits(conn, "log", Limits(3, 0.5), now=utcnow()), transaction=True)
        gate.admit("sms:gateway.example.net", "l", lease_seconds=60, concurrency=None, rate=None)
        gate.release("sms:gateway.example.net", "l", GateOutcome.TRANSIENT, breaker=BreakerPolicy(threshold=1))
        env = settings_env(database, redis_server_url, queue_name, WJP_ADMIN_TOKEN=TOKEN, WJP_OUTBOX_DIR=str(tmp_path))
        app = create_app(ServiceSettings.from_env(env), database=database, dispatcher=dispatcher, gate=gate)

        page = testing.TestClient(app).simulate_get(
            "/internal/dashboard", headers={"Authorization": f"Bearer {TOKEN}"}
        ).text
    finally:
        keys = list(client.scan_iter(match=f"{gate.prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()

    panel = page[page.index('<section id="destinations">') :]
    panel = panel[: panel.index("</section>")]
    assert "<img" not in panel
    assert html.escape(HOSTILE_DESTINATION) in panel
    rows = re.findall(r'<tr data-destination="([^"]*)">(.*?)</tr>', panel)
    # Each cell's text: the waiting count links to those jobs.
    cells = {
        html.unescape(key): [re.sub(r"<[^>]*>", "", cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        for key, row in rows
    }
    assert list(cells) == ["custom:<img src=x onerror=\"document.title=1\">:443", "log", "sms:gateway.example.net"]
    assert cells[HOSTILE_DESTINATION][-1] == "1"  # waiting
    assert cells["log"][1:3] == ["3 *", "0.5/s *"]
    assert cells["sms:gateway.example.net"][4] == "open"


#: The browser tests of the other pages run on one ledger: tests/service/test_dashboard_pages.py checks every page
#: and form on both, in process, at a fraction of a browser's cost.
ONE_LEDGER = pytest.mark.parametrize("database", ["postgresql"], indirect=True)


@ONE_LEDGER
def test_an_operator_filters_jobs_retries_a_class_of_failures_and_resets_a_circuit_in_a_real_browser(
    browser, base_url, database, gate, redis_messages
):
    relay, hook = "email:relay.example.com:25", "webhook:hooks.example.com:443"
    # Over two lines: a browser sends a form's line breaks as CRLF, and the group must still match its jobs.
    hook_error = f"{HOSTILE_ERROR}\nRetry-After: 120"
    relay_failures = [record(database, destination=relay) for _ in range(2)]
    hook_failure = record(database, destination=hook)
    for job in relay_failures:
        finish(database, job, "550 mailbox unavailable")
    finish(database, hook_failure, hook_error)
    record(database, destination=relay)
    gate.admit("log", "l", lease_seconds=60, concurrency=None, rate=None)
    gate.release("log", "l", GateOutcome.TRANSIENT, breaker=BreakerPolicy(threshold=1))

    def rows(table: str) -> list[str]:
        return browser.execute_script(
            "return [...document.querySelectorAll(arguments[0] + ' tr[data-job]')].map(row => row.dataset.job);", table
        )

    def go(name: str) -> None:
        browser.find_element(By.LINK_TEXT, name).click()
        current = (By.CSS_SELECTOR, "nav a[aria-current]")
        wait_until(lambda: browser.find_element(*current).text == name, f"the {name} page")

    browser.get(f"{base_url}/internal/dashboard/jobs")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_until(lambda: browser.current_url.endswith("/internal/dashboard"), "the dashboard after signing in")

    # Jobs: every job, newest first; then only the failed ones, then those of one destination.
    go("Jobs")
    assert len(rows("#job-list")) == 4
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("FAILED")
    browser.find_element(By.CSS_SELECTOR, "#job-filters button").click()
    wait_until(lambda: "status=FAILED" in browser.current_url, "the failed jobs")
    assert sorted(rows("#job-list")) == sorted(map(str, [*relay_failures, hook_failure]))
    browser.find_element(By.ID, "filter-destination").send_keys(relay)
    browser.find_element(By.CSS_SELECTOR, "#job-filters button").click()
    wait_until(lambda: len(rows("#job-list")) == 2, "the failed jobs of one destination")
    assert sorted(rows("#job-list")) == sorted(map(str, relay_failures))

    # A job's page: its attempt on the timeline, its error as text.
    browser.find_element(By.CSS_SELECTOR, f'#job-list tr[data-job="{relay_failures[0]}"] a').click()
    wait_until(lambda: browser.find_elements(By.ID, "attempts"), "the job's timeline")
    assert "permanent_error" in browser.find_element(By.CSS_SELECTOR, "#attempts li").text
    browser.back()

    # Bulk retry of the listed failures: first how many, with nothing changed yet, then the retry.
    browser.find_element(By.ID, "retry-matching").click()
    wait_until(lambda: browser.find_elements(By.ID, "retry-count"), "the count of jobs to retry")
    assert browser.find_element(By.ID, "retry-count").get_attribute("data-count") == "2"
    statuses = {job: database.run(lambda conn, job=job: queries.get_job(conn, job, scope=None)).status
                for job in [*relay_failures, hook_failure]}  # fmt: skip
    assert set(statuses.values()) == {Status.FAILED}
    browser.find_element(By.CSS_SELECTOR, "#confirm-retry button").click()
    wait_until(lambda: browser.find_elements(By.ID, "notice"), "the notice after the bulk retry")
    assert browser.find_element(By.ID, "notice").text == "2 failed jobs were queued again."
    for job in relay_failures:
        assert database.run(lambda conn, job=job: queries.get_job(conn, job, scope=None)).status is Status.PENDING
        assert f"{job}.2" in redis_messages.queued()
    # What is left on the Failures page: the other destination's group, its error as text.
    assert browser.execute_script(
        "return [...document.querySelectorAll('#failure-groups tr[data-group]')].map(row => row.dataset.destination);"
    ) == [hook]
    assert browser.find_element(By.CSS_SELECTOR, "#failure-groups td.error").text == hook_error
    # Its group's own button: counted, then retried.
    browser.find_element(By.CSS_SELECTOR, "button.retry-group").click()
    wait_until(lambda: browser.find_elements(By.ID, "retry-count"), "the count of the group's jobs")
    assert browser.find_element(By.ID, "retry-count").get_attribute("data-count") == "1"
    browser.find_element(By.CSS_SELECTOR, "#confirm-retry button").click()
    wait_until(lambda: browser.find_elements(By.ID, "no-failures"), "no failure left")
    assert browser.find_element(By.ID, "notice").text == "1 failed job was queued again."
    assert database.run(lambda conn: queries.get_job(conn, hook_failure, scope=None)).status is Status.PENDING

    # Destinations: the open circuit, reset by its button.
    go("Destinations")
    assert browser.find_element(By.CSS_SELECTOR, 'tr[data-destination="log"] td.circuit').text == "open"
    browser.find_element(By.CSS_SELECTOR, 'button.reset[data-destination="log"]').click()
    wait_until(lambda: browser.find_elements(By.ID, "notice"), "the notice after the reset")
    assert "The circuit of log is closed" in browser.find_element(By.ID, "notice").text
    assert gate.inspect(["log"])[0].circuit == "closed"

    # Health: both charts drawn, and nothing blocked by the pages' Content-Security-Policy all along.
    go("Health")
    assert browser.find_element(By.ID, "throughput-chart").is_displayed()
    assert browser.find_element(By.ID, "latency-chart").is_displayed()
    assert "0 failed" in browser.find_element(By.ID, "health-summary").text.replace("\n", " ")
    problems = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not [message for message in problems if "Content Security Policy" in message], problems
    assert browser.title != "pwned"


@ONE_LEDGER
def test_with_javascript_off_every_page_reads_and_a_failure_group_is_retried_through_its_count(
    browser_without_javascript, base_url, database
):
    browser = browser_without_javascript
    job = record(database, destination="log")
    finish(database, job, "HTTP 410 gone")

    browser.get(f"{base_url}/internal/dashboard")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    # Signing in posts the form and loads the page it answers with: as for every click below, wait for it.
    wait_until(lambda: browser.find_elements(By.LINK_TEXT, "Jobs"), "the dashboard after signing in")
    for name, shown in [("Jobs", "job-list"), ("Destinations", "destinations"), ("Health", "latency-chart"),
                        ("Failures", "failure-groups")]:  # fmt: skip
        browser.find_element(By.LINK_TEXT, name).click()
        # Each click loads a page: the next look waits for it (without scripts nothing tells the driver sooner).
        wait_until(lambda shown=shown: browser.find_elements(By.ID, shown), name)
        assert browser.find_element(By.ID, shown).is_displayed(), name

    browser.find_element(By.CSS_SELECTOR, "button.retry-group").click()
    wait_until(lambda: browser.find_elements(By.ID, "retry-count"), "the count of the jobs a retry will touch")
    assert browser.find_element(By.ID, "retry-count").get_attribute("data-count") == "1"
    browser.find_element(By.CSS_SELECTOR, "#confirm-retry button").click()

    wait_until(lambda: browser.find_elements(By.ID, "notice"), "the notice of the retry")
    assert browser.find_element(By.ID, "notice").text == "1 failed job was queued again."
    assert database.run(lambda conn: queries.get_job(conn, job, scope=None)).status is Status.PENDING
