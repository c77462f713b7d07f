"""A headless Chromium driven by Selenium (Debian's `chromium` and `chromium-driver`), and the app served over
real HTTP by an ASGI server on a free port: shared by the dashboard's browser tests and `make screenshots`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from tests.asgi_server import AsgiServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def missing() -> str | None:
    """Why no browser can be started here, or None when one can."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return None
    return f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): apt-get install them"


@contextmanager
def chromium(profile: Path, *, width: int = 1280, height: int = 900) -> Iterator[webdriver.Chrome]:
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
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@contextmanager
def served(app: object) -> Iterator[str]:
    """`app` served on a free port of 127.0.0.1 for the block; yields its base URL."""
    server = AsgiServer(app)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
