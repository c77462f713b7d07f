"""A worker process's share of its threads per destination (WJP_DESTINATION_SHARE), through a real Dramatiq worker:
it holds a black hole to one attempt at a time from its very first, and a destination that turns slow to fewer
threads the longer its attempts run, but never a destination that answers fast, which may use every thread."""

from __future__ import annotations

import threading
import time
import uuid

from sqlalchemy import func, select

from actors.broker import Dispatcher, make_broker
from actors.channels.base import Channel, ChannelConfig, Notification, TransientError
from actors.channels.webhook import WebhookChannel
from actors.flow.shares import SLOW_ATTEMPT
from ledger.schema import jobs
from ledger.states import Status
from tests.actors.conftest import running_worker, submit, wait_for_status, wait_until
from tests.actors.test_destinations import black_hole, webhook_job, webhook_settings
from tests.webhook_sink import webhook_sink

THREADS = 8
#: floor(WJP_DESTINATION_SHARE (default 0.5) × THREADS).
SHARE = 4


class PacedChannel(Channel):
    """The log channel, answering a recipient "fast" in 20 ms (long enough for attempts to overlap measurably) and
    a recipient "held" only once the test lets it go; counts the attempts inside it at once, for each recipient."""

    name = "log"

    def __init__(self) -> None:
        super().__init__(ChannelConfig())
        self.released = threading.Event()
        self.inside: dict[str, int] = {"fast": 0, "held": 0}
        self.most_inside: dict[str, int] = {"fast": 0, "held": 0}
        self._lock = threading.Lock()

    def check_recipient(self, recipient: str) -> str | None:
        return None

    def deliver(self, notification: Notification) -> str:
        recipient = notification.recipient
        with self._lock:
            self.inside[recipient] += 1
            self.most_inside[recipient] = max(self.most_inside[recipient], self.inside[recipient])
        try:
            if recipient == "fast":
                time.sleep(0.02)
            elif not self.released.wait(30):
                raise TransientError("never let go")
        finally:
            with self._lock:
                self.inside[recipient] -= 1
        return "paced"

    def count_inside(self, recipient: str) -> int:
        with self._lock:
            return self.inside[recipient]


def deferred_on(database, destination: str, reason: str) -> int:
    query = select(func.count()).where(jobs.c.destination == destination, jobs.c.deferred_reason == reason)
    return database.run(lambda conn: conn.execute(query).scalar_one())


def test_a_black_hole_holds_one_thread_from_its_first_attempt(
    make_settings, database, redis_server_url, queue_name
):
    # A fleet-wide limit far above the threads: only the process's share stands between the hole and every thread.
    settings = webhook_settings(
        make_settings, WJP_DESTINATION_CONCURRENCY="100", WJP_WEBHOOK_TIMEOUT="20", WJP_VISIBILITY_TIMEOUT="30"
    )
    dispatcher = Dispatcher(make_broker(redis_server_url), queue_name)
    channels = {"webhook": WebhookChannel(settings.channels)}
    # The black hole closes its connections first, so that the worker's stop does not wait out their timeouts.
    worker = running_worker(settings, database, channels=channels, threads=THREADS)
    with worker, webhook_sink() as healthy, black_hole() as hole:
        destination = f"webhook:127.0.0.1:{hole.port}"
        for _ in range(3 * SHARE):
            webhook_job(database, dispatcher, settings, hole.port)
        # Every job of the hole is either inside it or deferred; or, with no share, every thread is inside.
        wait_until(
            lambda: deferred_on(database, destination, "limit") + hole.open == 3 * SHARE or hole.open == THREADS,
            "the hole holds every thread it may and the rest of its jobs are deferred",
        )
        assert hole.most_open == 1, "never seen to answer, the black hole gets one attempt at a time"
        flowing = [webhook_job(database, dispatcher, settings, healthy.server.server_address[1]) for _ in range(10)]
        done = [wait_for_status(database, job_id) for job_id in flowing]
        held, most = hole.open, hole.most_open
        waiting = deferred_on(database, destination, "limit")

    assert (held, most) == (1, 1)
    assert waiting == 3 * SHARE - 1, "its other jobs wait, with no attempt spent"
    assert {job.status for job in done} == {Status.SUCCESS}, "the other threads deliver to the others meanwhile"


def test_a_destination_that_answers_fast_may_use_more_than_its_share_of_the_threads(
    make_settings, database, redis_server_url, queue_name
):
    settings = make_settings()
    dispatcher = Dispatcher(make_broker(redis_server_url), queue_name)
    channel = PacedChannel()
    # Its own key: the gate's state of a destination is shared by every test on this Redis.
    destination = f"log:fast-{uuid.uuid4().hex[:8]}"
    with running_worker(settings, database, channels={"log": channel}, threads=THREADS):
        job_ids = [
            submit(database, dispatcher, settings, recipient="fast", destination=destination)
            for _ in range(25 * THREADS)
        ]
        finished = [wait_for_status(database, job_id) for job_id in job_ids]

    assert {job.status for job in finished} == {Status.SUCCESS}
    assert channel.most_inside["fast"] > SHARE, "a receiver answering in milliseconds is not held to the share"


def test_a_fast_destination_that_turns_slow_holds_fewer_threads_the_longer_its_attempts_run(
    make_settings, database, redis_server_url, queue_name
):
    settings = make_settings()
    dispatcher = Dispatcher(make_broker(redis_server_url), queue_name)
    channel = PacedChannel()
    destination = f"log:turning-{uuid.uuid4().hex[:8]}"

    def send(recipient: str) -> uuid.UUID:
        return submit(database, dispatcher, settings, recipient=recipient, destination=destination)

    with running_worker(settings, database, channels={"log": channel}, threads=THREADS):
        known = [send("fast") for _ in range(2 * THREADS)]
        for job_id in known:
            wait_for_status(database, job_id)
        # It turns slow: two attempts stay in flight, well past the slow mark, while the other threads are free.
        slow = [send("held") for _ in range(2)]
        wait_until(lambda: channel.count_inside("held") == 2, "both slow attempts are in flight")
        time.sleep(2 * SLOW_ATTEMPT)
        slow += [send("held") for _ in range(THREADS)]
        wait_until(
            lambda: deferred_on(database, destination, "limit") + channel.count_inside("held") == THREADS + 2
            or channel.count_inside("held") == THREADS,
            "every thread it may take is taken and the rest of its jobs are deferred",
        )
        most, waiting = channel.most_inside["held"], deferred_on(database, destination, "limit")
        channel.released.set()
        finished = [wait_for_status(database, job_id) for job_id in slow]

    # Its oldest attempt has run 2 × SLOW_ATTEMPT: it may hold SHARE / 2 = 2 threads, which it has.
    assert most == 2, "held below its share once its oldest attempt outlived the slow mark twice over"
    assert waiting == THREADS, "the rest of its jobs wait, with no attempt spent"
    assert {job.status for job in finished} == {Status.SUCCESS}, "the waiting ones are woken as room frees"
