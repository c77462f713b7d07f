"""`make screenshots`: each dashboard page as a PNG in docs/, taken by headless Chromium from the app served on a
temporary SQLite ledger and an embedded Redis, filled with an hour of made-up traffic (the same every time)."""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import redis
from selenium import webdriver
from selenium.webdriver.common.by import By
from sqlalchemy import Connection

from actors.embedded_redis import EmbeddedRedis
from actors.flow import BreakerPolicy, Gate
from actors.flow import Outcome as GateOutcome
from ledger import claims, destinations, intake, transitions
from ledger.database import Database
from ledger.destinations import Limits
from ledger.intake import NewNotification
from ledger.migrate import upgrade
from ledger.states import Outcome
from ledger.timestamps import utcnow
from service.app import create_app
from service.settings import ServiceSettings
from tests import browser

TOKEN = "screenshots-admin-token"
SMTP, HOOKS, PARTNER = "email:smtp.example.com:587", "webhook:hooks.acme.example:443", "webhook:api.partner.example:443"
#: (channel, destination, recipient, error when it fails for good)
ROUTES = [
    ("email", SMTP, "ana@example.com", "550 5.1.1 <ana@example.com>: mailbox unavailable"),
    ("webhook", HOOKS, "https://hooks.acme.example/orders", "HTTP 503 Service Unavailable: upstream overloaded"),
    ("webhook", PARTNER, "https://api.partner.example/notify", "connect timeout after 10 s"),
    ("sms", "sms:gateway.example.net", "+6281234567890", "400 invalid number"),
]
WIDTH = 1440
#: Tallest picture, in pixels: a long page is shown from its top.
MAX_HEIGHT = 1800


def _job(conn: Connection, rng: random.Random, created: datetime, route: tuple[str, str, str, str]) -> uuid.UUID:
    channel, destination, recipient, _ = route
    request = NewNotification(
        idempotency_key=f"order-{rng.randrange(10**6, 10**7)}-{uuid.uuid4().hex[:6]}",
        recipient=recipient,
        channel=channel,
        message="Pesanan Anda sudah dikirim.",
        max_attempts=3,
        destination=destination,
    )
    return intake.accept(conn, request, now=created, dispatch_now=True).job_id


def sample(database: Database, gate: Gate, now: datetime) -> uuid.UUID:
    """An hour of traffic; returns a job that failed after retries, for its page."""
    rng = random.Random(23)
    shown: uuid.UUID | None = None

    def one(conn: Connection) -> None:
        nonlocal shown
        route = rng.choices(ROUTES, weights=[5, 4, 1, 1])[0]
        created = now - timedelta(seconds=rng.uniform(5, 3600))
        job = _job(conn, rng, created, route)
        fate = rng.random()
        if fate < 0.04:
            return  # still waiting
        moment, seq = created + timedelta(seconds=rng.uniform(0.05, 0.4)), 1
        failing = (fate < 0.12 and route[1] != "sms:gateway.example.net") or fate < 0.05
        for attempt in (1, 2, 3):
            if claims.claim(conn, job, seq, now=moment, worker="worker-1:4242:thread-2") is None:
                return
            moment += timedelta(seconds=rng.lognormvariate(-1.2, 0.6))
            if moment >= now:
                return
            if not failing and (attempt == 3 or rng.random() < 0.85):
                claims.succeed(conn, job, attempt, now=moment)
                return
            if attempt == 3 or (failing and rng.random() < 0.5):
                error = route[3]
                transitions.fail(conn, job, attempt, now=moment, outcome=Outcome.PERMANENT_ERROR, error=error)
                shown = job if attempt == 3 else shown
                return
            backoff = moment + timedelta(seconds=2**attempt)
            dispatch = transitions.schedule_retry(
                conn, job, attempt, now=moment, due_at=backoff, error="read timeout after 10 s"
            )
            if dispatch is None or backoff >= now:
                return
            moment, seq = backoff, dispatch.seq

    for _ in range(900):
        database.run(one, transaction=True)
    database.run(lambda conn: destinations.set_limits(conn, HOOKS, Limits(4, 20.0), now=now), transaction=True)
    gate.admit(PARTNER, "lease", lease_seconds=60, concurrency=None, rate=None)
    gate.release(PARTNER, "lease", GateOutcome.TRANSIENT, breaker=BreakerPolicy(threshold=1))
    assert shown is not None, "the sample has no job that failed after retries"
    return shown


def _save(driver: webdriver.Chrome, url: str, path: Path) -> None:
    """The whole page, however long: the viewport is made as tall as the page measured in a short one."""
    def viewport(height: int) -> None:
        metrics = {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)

    viewport(400)
    driver.get(url)
    viewport(min(int(driver.execute_script("return document.documentElement.scrollHeight")), MAX_HEIGHT))
    driver.save_screenshot(str(path))
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs"), help="where the PNGs go (default: docs)")
    args = parser.parse_args(argv)
    missing = browser.missing()
    if missing is not None:
        print(f"make screenshots {missing}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wjp-screenshots-") as tmp:
        embedded = EmbeddedRedis().start()
        database = Database(f"sqlite:///{Path(tmp) / 'ledger.sqlite3'}")
        try:
            upgrade(database)
            env = {
                "DATABASE_URL": database.engine.url.render_as_string(hide_password=False),
                "REDIS_URL": embedded.url,
                "WJP_QUEUE": "screenshots",
                "WJP_ADMIN_TOKEN": TOKEN,
                "WJP_OUTBOX_DIR": str(Path(tmp) / "outbox"),
            }
            app = create_app(ServiceSettings.from_env(env), database=database)
            failed = sample(database, Gate(redis.Redis.from_url(embedded.url)), utcnow())
            with browser.served(app) as base, browser.chromium(Path(tmp) / "chromium", width=WIDTH) as driver:
                driver.get(f"{base}/internal/dashboard/login")
                driver.find_element(By.ID, "token").send_keys(TOKEN)
                driver.find_element(By.CSS_SELECTOR, "#login button").click()
                pages = {
                    "overview": "",
                    "jobs": "/jobs?" + urlencode({"status": "FAILED", "channel": "webhook"}),
                    "job": f"/jobs/{failed}",
                    "failures": "/failures",
                    "bulk-retry": "/failures/retry?" + urlencode({"destination": HOOKS}),
                    "destinations": "/destinations",
                    "health": "/health",
                }
                for name, path in pages.items():
                    _save(driver, f"{base}/internal/dashboard{path}", args.out / f"dashboard-{name}.png")
        finally:
            database.dispose()
            embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
