"""The `wjp` command line: migrate, serve, worker, reconcile, stats, prune, dev."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

from actors.broker import BrokerUnavailable, Dispatcher, make_broker
from actors.channels import build_channels
from actors.reconciler import PassReport, Reconciler
from actors.settings import Settings, SettingsError
from ledger import maintenance, queries
from ledger.database import Database
from ledger.errors import LedgerUnavailable
from ledger.migrate import upgrade
from ledger.timestamps import utcnow
from service.settings import ServiceSettings

log = logging.getLogger("wjp")

GUNICORN_CONFIG = Path(__file__).resolve().parent / "gunicorn_conf.py"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class CommandError(Exception):
    """A command cannot go on; its one-line message is printed and the process exits non-zero."""


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s`, `2w` (or plain seconds) as a timedelta."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30d, 12h, 90m or 45s")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _settings() -> Settings:
    settings = Settings.from_env()
    try:
        build_channels(settings.channels)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return settings


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings()
    database = Database(settings.database_url)
    upgrade(database)
    print(f"ledger schema is up to date ({database.engine.url.render_as_string(hide_password=True)})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    ServiceSettings.from_env()
    _settings()
    argv = [
        sys.executable, "-m", "gunicorn",
        "--config", str(GUNICORN_CONFIG),
        "--bind", f"{args.host}:{args.port}",
        "--workers", str(args.workers),
        "service.app:create_app_from_env()",
    ]  # fmt: skip
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover - execv does not return


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings()
    # Dramatiq holds up to 1000 delayed messages per thread in memory; a process that dies strands them until
    # maintenance. A smaller hoard is plenty for retries and keeps that window small.
    os.environ.setdefault("dramatiq_delay_queue_prefetch", str(100 * args.threads))
    argv = [
        sys.executable, "-m", "dramatiq", "actors.worker",
        "--processes", str(args.processes),
        "--threads", str(args.threads),
        "--queues", settings.queue,
        # SIGTERM lets in-flight attempts finish: they are cut off before the visibility timeout anyway.
        "--worker-shutdown-timeout", str(int(settings.visibility_timeout * 1000)),
    ]  # fmt: skip
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover


def make_reconciler(settings: Settings) -> Reconciler:
    return Reconciler(
        database=Database(settings.database_url, pool_size=2),
        dispatcher=Dispatcher(make_broker(settings.redis_url), settings.queue),
        visibility_timeout=settings.visibility_timeout,
        grace=settings.reconcile_grace,
        schedule_horizon=settings.schedule_horizon,
    )


def cmd_reconcile(args: argparse.Namespace) -> int:
    settings = _settings()
    reconciler = make_reconciler(settings)

    def report(result: PassReport) -> None:
        print(result.to_json(), flush=True)

    if not args.loop:
        report(reconciler.run_once())
        return 0
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    reconciler.run_forever(settings.reconcile_interval, stop, report)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    settings = _settings()
    stats = Database(settings.database_url, pool_size=1).run(lambda conn: queries.queue_stats(conn, now=utcnow()))
    rows = [(status.value.lower(), str(count)) for status, count in stats.counts.items()]
    rows.append(("avg_attempts_success", f"{stats.avg_attempts_success:g}"))
    rows.append(("oldest_due_age_seconds", f"{stats.oldest_due_age:.1f}"))
    width = max(len(name) for name, _ in rows)
    print(f"{'status'.ljust(width)}  value")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value.rjust(5)}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    settings = _settings()
    database = Database(settings.database_url, pool_size=1)
    now = utcnow()
    deleted = 0
    while True:
        batch = database.run(
            lambda conn: maintenance.prune(conn, finished_before=now - args.older_than, now=now, limit=1000),
            transaction=True,
        )
        deleted += batch
        if batch < 1000:
            break
    print(f'{{"deleted": {deleted}}}')
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    _settings()
    from service import dev  # fakeredis and the process supervisor are needed by this command alone

    return dev.run(host=args.host, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wjp", description="worker-job-processor: notification jobs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    command("migrate", cmd_migrate, "create or upgrade the ledger schema")
    serve = command("serve", cmd_serve, "run the HTTP API under gunicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_positive, default=8000)
    serve.add_argument("--workers", type=_positive, default=min(4, 2 * (os.cpu_count() or 1)))
    worker = command("worker", cmd_worker, "run the Dramatiq delivery workers")
    worker.add_argument("--processes", type=_positive, default=os.cpu_count() or 1)
    worker.add_argument("--threads", type=_positive, default=8)
    reconcile = command("reconcile", cmd_reconcile, "compare the ledger with Redis and repair (one pass)")
    reconcile.add_argument("--loop", action="store_true", help="repeat every WJP_RECONCILE_INTERVAL seconds")
    command("stats", cmd_stats, "print the queue statistics")
    prune = command("prune", cmd_prune, "delete finished jobs older than a duration")
    prune.add_argument("--older-than", type=parse_duration, required=True, metavar="DURATION")
    dev = command("dev", cmd_dev, "run API, worker and reconciler on SQLite and an embedded Redis")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=_positive, default=8000)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except SettingsError as exc:
        print(f"wjp: invalid setting: {exc}", file=sys.stderr)
    except LedgerUnavailable as exc:
        print(f"wjp: ledger unreachable: {exc}", file=sys.stderr)
    except BrokerUnavailable as exc:
        print(f"wjp: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
