"""`wjp dev`: the whole system in one process tree on the embedded defaults, for trying it out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from actors.channels.email_address import parse_smtp_url
from actors.embedded_redis import EmbeddedRedis
from actors.settings import Settings
from ledger.database import Database, without_credentials
from ledger.migrate import upgrade
from service import multiproc

#: Seconds to wait for the API to answer /healthz before reporting that it did not start.
STARTUP_TIMEOUT = 60.0


def _absolute_sqlite(url: str) -> str:
    """Children must agree on the SQLite file whatever their working directory: make its path absolute."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str(Path(url[len(prefix) :]).resolve())
    return url


class DevStack:
    """Starts the API, a worker and the reconciler loop as child processes and stops them together."""

    def __init__(self, *, host: str, port: int, settings: Settings, redis: EmbeddedRedis | None) -> None:
        self.host, self.port = host, port
        self.settings = settings
        self.redis = redis
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DATABASE_URL"] = _absolute_sqlite(self.settings.database_url)
        env["REDIS_URL"] = self.redis.url if self.redis else self.settings.redis_url
        env.setdefault("WJP_OUTBOX_DIR", str(self.settings.channels.outbox_dir))
        return env

    def start(self) -> None:
        env = self.environment()
        wjp = [sys.executable, "-m", "service.cli"]
        commands = {
            "api": [*wjp, "serve", "--host", self.host, "--port", str(self.port), "--workers", "2"],
            "worker": [*wjp, "worker", "--processes", "1", "--threads", "4"],
            "reconciler": [*wjp, "reconcile", "--loop"],
        }
        for name, command in commands.items():
            # A session of its own: the terminal's Ctrl-C reaches only us, and we stop each child's main
            # process ourselves (Dramatiq's children must not get the signal twice).
            self.children[name] = subprocess.Popen(command, env=env, start_new_session=True)

    def wait_until_serving(self) -> bool:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if any(child.poll() is not None for child in self.children.values()):
                return False
            try:
                with urllib.request.urlopen(f"http://{self.host}:{self.port}/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        return True
            except OSError:
                time.sleep(0.2)
        return False

    def stop(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.visibility_timeout
        for child in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        if self.redis is not None:
            self.redis.stop()


def banner(*, host: str, port: int, env: dict[str, str], settings: Settings, embedded: bool) -> str:
    """What `wjp dev` prints once everything serves: where each part is, and where emails go; no password."""
    if settings.channels.smtp_url:
        # Host and port only: the URL may carry a password.
        server = parse_smtp_url(settings.channels.smtp_url)
        email = f"  email       sent to the SMTP server at {server.host}:{server.port} (WJP_SMTP_URL)\n"
    else:
        email = f"  outbox      {env['WJP_OUTBOX_DIR']}  (emails land here as .eml files)\n"
    return (
        "\nworker-job-processor is running (Ctrl-C stops everything)\n"
        f"  API         http://{host}:{port}  (try /healthz, /internal/queue/stats, /openapi.json)\n"
        f"  dashboard   http://{host}:{port}/internal/dashboard   metrics  http://{host}:{port}/metrics\n"
        f"  ledger      {without_credentials(env['DATABASE_URL'])}\n"
        f"  redis       {without_credentials(env['REDIS_URL'])}{'  (embedded)' if embedded else ''}\n"
        f"{email}"
        "  processes   API (gunicorn), worker (dramatiq), reconciler (loop)\n"
    )


def run(*, host: str, port: int) -> int:
    """Run until Ctrl-C or SIGTERM, then stop every process started here; 0 on a clean stop."""
    embedded = EmbeddedRedis().start() if not os.environ.get("REDIS_URL", "").strip() else None
    settings = Settings.from_env(redis_url=embedded.url if embedded else None)
    upgrade(Database(_absolute_sqlite(settings.database_url), pool_size=1))
    # One metrics directory for the whole stack: the API's /metrics then shows the worker's and the
    # reconciler's metrics too.
    multiproc.ensure_dir(os.environ)
    stack = DevStack(host=host, port=port, settings=settings, redis=embedded)
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    stack.start()
    try:
        if not stack.wait_until_serving():
            print("wjp dev: the API did not start; see the messages above", file=sys.stderr)
            return 1
        env = stack.environment()
        print(banner(host=host, port=port, env=env, settings=settings, embedded=embedded is not None), flush=True)
        while not stopping.wait(0.5):
            for name, child in stack.children.items():
                if child.poll() is not None:
                    print(f"wjp dev: the {name} stopped (exit {child.returncode}); stopping the rest", file=sys.stderr)
                    return 1
        return 0
    finally:
        stack.stop()
