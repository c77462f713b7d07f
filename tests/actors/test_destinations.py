"""Flow control against real receivers, through a real Dramatiq worker: a black-holed receiver ties up no more
than its limit while others flow, and a throttling one gets its jobs' attempts back and pauses its destination."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import redis
from sqlalchemy import func, select

from actors.broker import Dispatcher, make_broker, parse_redis_message_id
from actors.channels.webhook import WebhookChannel
from actors.flow.terms import QueueKeys
from ledger import queries
from ledger.schema import jobs
from ledger.states import Status
from tests.actors.channels.slow_peers import peer_closed
from tests.actors.conftest import running_worker, submit, wait_for_status, wait_until
from tests.actors.test_flow_circuit import reset_by_command
from tests.flow_checks import gate_of
from tests.holding_receiver import holding_receiver
from tests.webhook_sink import Reply, webhook_sink


class BlackHole:
    """Accepts connections and never answers; counts, server side, the connections its clients hold open."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.open = 0
        self.most_open = 0
        self.accepted = 0
        self._lock = threading.Lock()
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.open += 1
                self.accepted += 1
                self.most_open = max(self.most_open, self.open)
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        with conn:
            while not self.stopped.is_set() and not peer_closed(conn):
                time.sleep(0.02)
        with self._lock:
            self.open -= 1

    def stop(self) -> None:
        self.stopped.set()
        self._listener.close()


@contextmanager
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.stop()


def deferral_reason(database, job_id: uuid.UUID) -> str | None:
    return database.run(lambda conn: conn.execute(select(jobs.c.deferred_reason).where(jobs.c.id == job_id)).scalar())


def deferred_count(database, job_ids: list[uuid.UUID]) -> int:
    query = select(func.count()).where(jobs.c.id.in_(job_ids), jobs.c.deferred_reason.is_not(None))
    return database.run(lambda conn: conn.execute(query).scalar_one())


def webhook_settings(make_settings, **env: str):
    env.setdefault("WJP_WEBHOOK_ALLOW_PRIVATE", "true")
    return make_settings(**env)


def webhook_job(database, dispatcher, settings, port: int) -> uuid.UUID:
    return submit(
        database, dispatcher, settings, channel="webhook", recipient=f"http://127.0.0.1:{port}/hook",
        destination=f"webhook:127.0.0.1:{port}",
    )  # fmt: skip


def test_a_receiver_that_turns_into_a_black_hole_holds_only_its_limit_while_another_destination_flows(
    make_settings, database, redis_server_url, queue_name
):
    settings = webhook_settings(
        make_settings, WJP_DESTINATION_CONCURRENCY="2", WJP_WEBHOOK_TIMEOUT="20", WJP_VISIBILITY_TIMEOUT="30"
    )
    dispatcher = Dispatcher(make_broker(redis_server_url), queue_name)
    channels = {"webhook": WebhookChannel(settings.channels)}
    worker = running_worker(settings, database, channels=channels, threads=8)
    # It answers its first request at once, so the worker knows it fast (and would give it its share of 4 threads);
    # then it holds every request (it lets them go when it closes, before the worker stops).
    with worker, webhook_sink() as healthy, holding_receiver([0.0, 600.0]) as hole:
        wait_for_status(database, webhook_job(database, dispatcher, settings, hole.port))
        stuck = [webhook_job(database, dispatcher, settings, hole.port) for _ in range(6)]
        flowing = [webhook_job(database, dispatcher, settings, healthy.server.server_address[1]) for _ in range(10)]

        done = [wait_for_status(database, job_id) for job_id in flowing]
        held, most = hole.in_flight, hole.most_in_flight()
        # The deferrals are recorded apart from the claims (`DEFERRALS_GATHER`): by now, or moments later.
        wait_until(lambda: deferred_count(database, stuck) == 4, "the 4 jobs beyond the limit are recorded deferred")
        rows = database.run(lambda conn: conn.execute(select(jobs).where(jobs.c.id.in_(stuck))).all())

    assert {job.status for job in done} == {Status.SUCCESS}
    assert (held, most) == (2, 2), "the black hole holds exactly its concurrency, never more"
    deferred = [row for row in rows if row.attempts == 0]
    assert len(deferred) == 4, "the jobs beyond the limit spent no attempt"
    assert {(row.status, row.deferred_reason) for row in deferred} == {("PENDING", "limit")}


def test_a_throttling_receiver_gets_the_attempt_back_and_its_destination_paused(
    make_settings, database, redis_server_url, queue_name
):
    settings = webhook_settings(make_settings, WJP_MAX_ATTEMPTS="1")
    dispatcher = Dispatcher(make_broker(redis_server_url), queue_name)
    channels = {"webhook": WebhookChannel(settings.channels)}
    with webhook_sink([Reply(429, {"Retry-After": "2"}), Reply(200)]) as sink, running_worker(
        settings, database, channels=channels, threads=4
    ):
        port = sink.server.server_address[1]
        throttled = webhook_job(database, dispatcher, settings, port)
        while sink.count() < 1:
            time.sleep(0.02)
        wait_for_status(database, throttled, {Status.RETRY})
        other = webhook_job(database, dispatcher, settings, port)
        # The destination is paused: the other job is deferred, not sent to be refused.
        deadline = time.monotonic() + 10
        while deferral_reason(database, other) != "throttled" and time.monotonic() < deadline:
            time.sleep(0.02)
        sent_while_paused = sink.count()
        first, second = wait_for_status(database, throttled), wait_for_status(database, other)

    assert sent_while_paused == 1
    assert (first.status, second.status) == (Status.SUCCESS, Status.SUCCESS)
    assert (first.attempts, first.max_attempts, second.attempts) == (2, 2, 1)
    history = database.run(lambda conn: queries.list_attempts(conn, throttled))
    assert [a.outcome for a in history] == ["throttled", "success"]
    assert history[1].started_at - history[0].finished_at >= timedelta(seconds=2), "not before its Retry-After"


def test_jobs_waiting_out_a_long_pause_send_one_message_back_for_its_end_the_others_wait_on_the_list(
    make_settings, postgres_db, redis_server_url, queue_name
):
    settings = webhook_settings(make_settings)
    dispatcher = Dispatcher(make_broker(redis_server_url), queue_name)
    channels = {"webhook": WebhookChannel(settings.channels)}
    with webhook_sink([Reply(429, {"Retry-After": "600"}), Reply(200)]) as sink, running_worker(
        settings, postgres_db, channels=channels, threads=4
    ), gate_of(redis_server_url, queue_name) as (gate, used), redis.Redis.from_url(redis_server_url) as client:
        port = sink.server.server_address[1]
        key = f"webhook:127.0.0.1:{port}"
        used.append(key)
        throttled = webhook_job(postgres_db, dispatcher, settings, port)
        wait_for_status(postgres_db, throttled, {Status.RETRY})
        waiting = [webhook_job(postgres_db, dispatcher, settings, port) for _ in range(4)]
        waiting_list = gate.waiting_list(QueueKeys.of(queue_name), key)

        def parked_jobs() -> set[uuid.UUID]:
            return {parse_redis_message_id(rid.decode())[0] for rid in client.lrange(waiting_list, 0, -1)}

        deadline = time.monotonic() + 10
        while len(parked_jobs()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        parked = parked_jobs()
        reset_by_command(postgres_db, redis_server_url, queue_name, key)
        rows = [wait_for_status(postgres_db, job_id, timeout=10) for job_id in waiting]
        sent = sink.count()

    assert len(parked) == 3, "all but one wait on the destination's list, not in the delay queue"
    assert {(job.status, job.attempts) for job in rows} == {(Status.SUCCESS, 1)}, "sent by the reset, not in 10 min"
    assert sent == 1 + 4
