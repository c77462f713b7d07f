"""The `wjp` command line: migrate, serve, worker, reconcile, stats, retry, api-key, destinations, prune, dev."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from actors import log_format, tracing
from actors.broker import BrokerUnavailable, Dispatcher, make_broker
from actors.channels import build_channels
from actors.flow import Gate
from actors.flow.keys import MalformedKey
from actors.flow.overview import Destinations
from actors.reconciler import PassReport, Reconciler
from actors.settings import Settings, SettingsError
from ledger import api_keys, bulk_retry, maintenance, queries
from ledger.database import Database, without_credentials
from ledger.errors import LedgerUnavailable
from ledger.timestamps import utcnow
from service import cli_destinations, cli_keys, multiproc

log = logging.getLogger("wjp")

GUNICORN_CONFIG = Path(__file__).resolve().parent / "gunicorn_conf.py"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: Jobs re-queued per statement by `wjp retry`: bounds each transaction's locks.
RETRY_BATCH = 500


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
    tracing.configured()  # a bad OTEL_* value stops every command, `serve` and `worker` before they start
    try:
        build_channels(settings.channels)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return settings


def _ledger(settings: Settings) -> Database:
    """The ledger of a one-thread command, the reconciler included: a connection for single statements and one
    for transactions, no more (README.md, "Running in production")."""
    return Database(
        settings.database_url, pool_size=1, transactions=1, kept=0, prepared_statements=settings.prepared_statements
    )


def cmd_migrate(args: argparse.Namespace) -> int:
    from ledger.migrate import upgrade  # Alembic: for this command and `serve` alone

    settings = _settings()
    database = _ledger(settings)
    upgrade(database)
    print(f"ledger schema is up to date ({without_credentials(settings.database_url)})")
    return 0


def _metrics_dir() -> str:
    try:
        return multiproc.ensure_dir(os.environ)
    except OSError as exc:
        raise CommandError(f"cannot prepare the metrics directory ({multiproc.VARIABLE}): {exc}") from None


def _warn_if_api_open(settings: Settings) -> None:
    """While no producer key exists anyone who reaches the API may post: said once, at start."""
    from ledger.migrate import current_revision

    database = _ledger(settings)
    try:
        # Not migrated or not reachable yet: the API reports that itself (/readyz).
        open_to_all = current_revision(database) is not None and not database.run(api_keys.any_exist)
    except LedgerUnavailable:
        open_to_all = False
    finally:
        database.dispose()
    if open_to_all:
        log.warning("no producer API key exists: /api/* is open to anyone who reaches it (wjp api-key create NAME)")


def cmd_serve(args: argparse.Namespace) -> int:
    from service.settings import ServiceSettings, check_exposure  # the API's, with Falcon: not for the other commands

    check_exposure(args.host, ServiceSettings.from_env().admin_token)
    settings = _settings()
    _warn_if_api_open(settings)
    # Before gunicorn starts: its workers' metrics are merged through this directory.
    _metrics_dir()
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
    if settings.channels.webhook_secret is None:
        log.warning("WJP_WEBHOOK_SECRET is not set: webhooks go out unsigned, so receivers cannot verify them")
    # Each worker process sizes its ledger connections to its threads (actors/worker.py).
    os.environ["WJP_WORKER_THREADS"] = str(args.threads)
    # Before Dramatiq starts: its processes' metrics are merged through this directory, which its Prometheus
    # exporter (WJP_WORKER_METRICS_PORT) also serves; both read it and the port from the environment.
    metrics_dir = _metrics_dir()
    if settings.worker_metrics_port:
        # Dramatiq's own (lower-case) variable names.
        os.environ["dramatiq_prom_db"] = metrics_dir  # noqa: SIM112
        os.environ["dramatiq_prom_port"] = str(settings.worker_metrics_port)  # noqa: SIM112
    # Dramatiq runs in this process rather than under its own command: its worker processes are forked from here
    # with everything they need imported (actors.worker), instead of a new interpreter importing it all again in
    # each of them (bench/README.md, "Workers that start fast").
    from dramatiq import cli as dramatiq_cli

    from actors import worker

    worker.ConsumerSettings(os.environ, args.threads)  # a bad dramatiq_* value stops `wjp worker` in one line
    dramatiq_args = dramatiq_cli.make_argument_parser().parse_args([
        "actors.worker:boot",
        "--processes", str(args.processes),
        "--threads", str(args.threads),
        "--queues", settings.queue,
        # SIGTERM lets in-flight attempts finish: they are cut off before the visibility timeout anyway.
        "--worker-shutdown-timeout", str(int(settings.visibility_timeout * 1000)),
    ])  # fmt: skip
    # Dramatiq sets up the logging of each of its processes itself, as under its own command; ours would shadow it.
    # In JSON the root logger is set up first instead: Dramatiq's set-up then leaves it be, and its processes inherit.
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    if log_format.json_logs():
        log_format.configure()
    # Dramatiq's reload (SIGHUP) execs sys.argv as it is: under `python -m service.cli` its first item is this file,
    # which is no program.
    if not os.access(sys.argv[0], os.X_OK):
        sys.argv = [sys.executable, "-m", "service.cli", *sys.argv[1:]]
    return dramatiq_cli.main(dramatiq_args)


def make_reconciler(settings: Settings) -> Reconciler:
    return Reconciler(
        database=_ledger(settings),
        dispatcher=Dispatcher(make_broker(settings.redis_url), settings.queue),
        visibility_timeout=settings.visibility_timeout,
        grace=settings.reconcile_grace,
        schedule_horizon=settings.schedule_horizon,
        flow=settings.flow,
        max_attempts=settings.max_attempts,
    )


def cmd_reconcile(args: argparse.Namespace) -> int:
    settings = _settings()
    tracing.start("wjp-reconciler")
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
    stats = _ledger(settings).run(lambda conn: queries.queue_stats(conn, now=utcnow()))
    rows = [(status.value.lower(), str(count)) for status, count in stats.counts.items()]
    rows.append(("avg_attempts_success", f"{stats.avg_attempts_success:g}"))
    rows.append(("oldest_due_age_seconds", f"{stats.oldest_due_age:.1f}"))
    width = max(len(name) for name, _ in rows)
    print(f"{'status'.ljust(width)}  value")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value.rjust(5)}")
    return 0


def since(text: str) -> datetime:
    """`--since`: an RFC 3339 time, or a duration back from now (`2h`, `30m`, `1d`)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return utcnow() - parse_duration(text)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone, like 2026-01-31T09:00:00Z")
    return moment


def cmd_retry(args: argparse.Namespace) -> int:
    settings = _settings()
    tracing.start("wjp-cli")
    database = _ledger(settings)
    dispatcher = Dispatcher(make_broker(settings.redis_url), settings.queue)
    now = utcnow()
    retried, unsent = 0, 0
    while True:
        batch = database.run(
            lambda conn: bulk_retry.retry_failed(
                conn,
                bulk_retry.FailedJobs(failed_before=now, failed_since=args.since, channel=args.channel),
                now=now,
                extra_attempts=settings.max_attempts,
                limit=RETRY_BATCH,
            ),
            transaction=True,
        )
        retried += len(batch)
        try:
            dispatcher.send(batch, now=now)
        except BrokerUnavailable as exc:
            # The jobs are PENDING in the ledger: the reconciler sends them once Redis answers.
            log.warning("%d re-queued jobs not yet sent: %s", len(batch), exc)
            unsent += len(batch)
        if len(batch) < RETRY_BATCH:
            break
    print(f'{{"retried": {retried}, "unsent": {unsent}}}')
    return 1 if unsent else 0


def cmd_api_key(args: argparse.Namespace) -> int:
    try:
        return cli_keys.run(args, _ledger(_settings()))
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def cmd_destinations(args: argparse.Namespace) -> int:
    settings = _settings()
    broker = make_broker(settings.redis_url)
    dispatcher = Dispatcher(broker, settings.queue)
    destinations = Destinations(_ledger(settings), Gate(broker.client), settings.flow, dispatcher)
    try:
        return cli_destinations.run(args, destinations)
    except MalformedKey as exc:
        raise CommandError(f"not a destination key: {exc}") from None
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def cmd_prune(args: argparse.Namespace) -> int:
    settings = _settings()
    database = _ledger(settings)
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
    retry = command("retry", cmd_retry, "re-queue FAILED jobs with a fresh attempt budget")
    retry.add_argument("--failed", action="store_true", required=True, help="re-queue FAILED jobs (required)")
    retry.add_argument("--since", type=since, metavar="TIME", help="only jobs that failed since: 2h, 1d or RFC 3339")
    retry.add_argument("--channel", metavar="CHANNEL", help="only jobs of this channel")
    cli_keys.add_parser(commands, cmd_api_key)
    cli_destinations.add_parser(commands, cmd_destinations)
    prune = command("prune", cmd_prune, "delete finished jobs older than a duration")
    prune.add_argument("--older-than", type=parse_duration, required=True, metavar="DURATION")
    dev = command("dev", cmd_dev, "run API, worker and reconciler on SQLite and an embedded Redis")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=_positive, default=8000)
    return parser


def _fail(text: str) -> None:
    """The one line a command that cannot go on ends with: a JSON log line with `WJP_LOG_FORMAT=json`."""
    if log_format.json_logs():
        log.error(text)
    else:
        print(f"wjp: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        log_format.configure()
    except log_format.BadLogFormat as exc:
        print(f"wjp: invalid setting: {exc}", file=sys.stderr)
        return 1
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except SettingsError as exc:
        _fail(f"invalid setting: {exc}")
    except LedgerUnavailable as exc:
        _fail(f"ledger unreachable: {exc}")
    except (BrokerUnavailable, CommandError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
