"""The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium) against
the app served by a real WSGI server: signing in, the counts, a failure's error, the retry button, lookup by id and
by idempotency key, and the page refreshing itself, checked as a person would see them."""

from __future__ import annotations

import html
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import redis
from falcon import testing
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

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
from tests.conftest import settings_env, unavailable

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "dashboard-test-token"
#: An error as a hostile webhook receiver might word it: it must show as text, never run.
HOSTILE_ERROR = '550 5.1.1 user unknown <script>document.title = "pwned"</script>'


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        unavailable(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): apt-get install them")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def base_url(database: Database, dispatcher, redis_server_url: str, queue_name: str, tmp_path) -> Iterator[str]:
    """The app, with an admin token, served over HTTP by a real WSGI server on a free port."""
    env = settings_env(database, redis_server_url, queue_name, WJP_ADMIN_TOKEN=TOKEN, WJP_OUTBOX_DIR=str(tmp_path))
    app = create_app(ServiceSettings.from_env(env), database=database, dispatcher=dispatcher)
    server = make_server("127.0.0.1", 0, app, server_class=_Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def record(database: Database, key: str | None = None) -> uuid.UUID:
    request = NewNotification(
        idempotency_key=key or uuid.uuid4().hex,
        recipient="user@example.com",
        channel="email",
        message="Halo dari sistem worker!",
        max_attempts=1,
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
