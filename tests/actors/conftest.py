"""A real Dramatiq worker, in this process, on real Redis and the test's ledger."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from dramatiq import Worker

from actors.actor import declare_actor
from actors.broker import Dispatcher, make_broker
from actors.callbacks import CallbackDelivery, declare_callback_actor
from actors.channels import build_channels
from actors.channels.base import Channel, ChannelConfig, Notification, TransientError
from actors.channels.webhook import WebhookChannel
from actors.delivery import Delivery
from actors.reconciler import Reconciler
from actors.settings import Settings
from ledger import intake, queries
from ledger.database import Database
from ledger.intake import NewNotification
from ledger.states import FINISHED, Status
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from tests.conftest import settings_env
from tests.pg_cluster import private_cluster, private_ledger  # noqa: F401 (fixtures offered here)


def settings_builder(database: Database, redis_url: str, queue: str, tmp_path) -> Callable[..., Settings]:
    def build(**env: str) -> Settings:
        env.setdefault("WJP_OUTBOX_DIR", str(tmp_path / "outbox"))
        env.setdefault("WJP_BACKOFF_INITIAL", "0.2")
        env.setdefault("WJP_BACKOFF_JITTER", "0.05")
        return Settings.from_env(settings_env(database, redis_url, queue, **env))

    return build


@pytest.fixture
def make_settings(database: Database, redis_server_url: str, queue_name: str, tmp_path) -> Callable[..., Settings]:
    return settings_builder(database, redis_server_url, queue_name, tmp_path)


@pytest.fixture
def make_private_settings(
    request: pytest.FixtureRequest, redis_server_url: str, queue_name: str, tmp_path
) -> Callable[..., Settings]:
    """`make_settings` for the ledger on the private cluster (`private_ledger`), which the test may stop and start."""
    return settings_builder(request.getfixturevalue("private_ledger"), redis_server_url, queue_name, tmp_path)


@contextmanager
def running_worker(
    settings: Settings,
    database: Database,
    *,
    channels: dict[str, Channel] | None = None,
    threads: int = 4,
    clock: Callable[[], datetime] = utcnow,
    booted: bool = False,
) -> Iterator[Delivery]:
    """Start a Dramatiq worker with the delivery actor; stop it (letting attempts finish) on exit.

    `booted`: also run the middleware's process-boot hooks, as `dramatiq` does in each worker process (that is
    where the time limit's watchdog thread starts); off by default, since that thread outlives the worker."""
    broker = make_broker(settings.redis_url)
    delivery = Delivery(
        database=database,
        dispatcher=Dispatcher(broker, settings.queue),
        channels=channels if channels is not None else build_channels(settings.channels),
        settings=settings,
        clock=clock,
        threads=threads,
    )
    declare_actor(broker, delivery, settings)
    # Status callbacks, as `actors.worker` declares them beside the delivery actor.
    webhook = delivery.channels.get("webhook")
    callbacks = CallbackDelivery(
        database=database, dispatcher=delivery.dispatcher, settings=settings, flow=delivery.flow, clock=clock,
        ledger=delivery.ledger, armed=delivery.armed,
        webhook=webhook if isinstance(webhook, WebhookChannel) else WebhookChannel(settings.channels),
    )  # fmt: skip
    declare_callback_actor(broker, callbacks, settings)
    if booted:
        broker.emit_after("process_boot")
    worker = Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    try:
        yield delivery
    finally:
        worker.stop()
        broker.close()


def submit(
    database: Database,
    dispatcher: Dispatcher | None,
    settings: Settings,
    *,
    key: str | None = None,
    now: datetime | None = None,
    **fields: Any,
) -> uuid.UUID:
    """Record a notification the way the API does, and send its message unless `dispatcher` is None."""
    fields.setdefault("recipient", "someone")
    fields.setdefault("channel", "log")
    fields.setdefault("message", "hello")
    request = NewNotification(idempotency_key=key or uuid.uuid4().hex, max_attempts=settings.max_attempts, **fields)
    now = now or utcnow()
    result = database.run(lambda conn: intake.accept(conn, request, now=now, dispatch_now=True))
    if dispatcher is not None:
        # Only a job given a destination has it on its message: others go straight to their claims, as before.
        destination = result.destination if "destination" in fields else ""
        dispatcher.send([Dispatch(result.job_id, result.dispatch_seq, result.next_attempt_at, destination)], now=now)
    return result.job_id


def wait_for_status(
    database: Database, job_id: uuid.UUID, statuses: set[Status] = FINISHED, timeout: float = 20.0
) -> queries.JobView:
    """Poll the ledger until the job reaches one of `statuses`; fail with its last state otherwise."""
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = database.run(lambda conn: queries.get_job(conn, job_id, scope=None))
        if job is not None and job.status in statuses:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not reach {sorted(statuses)} in {timeout}s; last seen: {job}")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll `condition` until it holds; fail saying `what` did not happen otherwise."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def gaps(attempts: list[queries.AttemptView]) -> list[timedelta]:
    """Time from the end of each attempt to the start of the next."""
    return [b.started_at - a.finished_at for a, b in itertools.pairwise(attempts)]


class RecordingChannel(Channel):
    """A channel that remembers each delivery, so a test can count them; optionally slow or failing."""

    name = "log"

    def __init__(self, *, delay: float = 0.0, failures: int = 0) -> None:
        super().__init__(ChannelConfig())
        self.delay = delay
        self.failures = failures
        self.deliveries: list[tuple[uuid.UUID, int]] = []
        self._lock = threading.Lock()

    def check_recipient(self, recipient: str) -> str | None:
        return None

    def deliver(self, notification: Notification) -> str:
        time.sleep(self.delay)
        with self._lock:
            self.deliveries.append((notification.job_id, notification.attempt))
            if len(self.deliveries) <= self.failures:
                raise TransientError("recording channel failing on purpose")
        return "recorded"

    def count(self, job_id: uuid.UUID) -> int:
        with self._lock:
            return sum(1 for delivered, _ in self.deliveries if delivered == job_id)


def make_reconciler(
    settings: Settings, database: Database, dispatcher: Dispatcher, *, clock: Callable[[], datetime] = utcnow
) -> Reconciler:
    return Reconciler(
        database=database,
        dispatcher=dispatcher,
        visibility_timeout=settings.visibility_timeout,
        grace=settings.reconcile_grace,
        schedule_horizon=settings.schedule_horizon,
        clock=clock,
        flow=settings.flow,
        max_attempts=settings.max_attempts,
    )
