"""What a live worker leases in Redis comes back to it: messages whose fetch reply was lost on the way, and the copy
a worker thread enqueues under the id of the message it is processing."""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from dramatiq import Worker

from actors.broker import NAMESPACE, Dispatcher, make_broker
from actors.delivery import Delivery, declare_actor
from actors.settings import Settings
from ledger.database import Database
from ledger.states import Status
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from tests.actors.conftest import RecordingChannel, submit, wait_for_status
from tests.conftest import settings_env

QUEUE = "leases"
#: Seconds a worker's Redis call waits for its reply here: long enough for a loaded test machine, short for the test.
SOCKET_TIMEOUT = 1.0


class ReplyLosingProxy:
    """A TCP proxy in front of a server that, once armed, loses one reply: the first chunk from the server holding
    `pattern` is swallowed, with everything after it on that connection, so the client waits out its socket timeout
    as it would for a server that stalled. Other connections, and later ones, pass untouched."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lost = threading.Event()
        self._pattern: bytes | None = None
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_reply_holding(self, pattern: bytes) -> None:
        self._pattern = pattern

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, from_server: bool) -> None:
        stalled = False
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if from_server and not stalled:
                    with self._lock:
                        if self._pattern is not None and self._pattern in data:
                            self._pattern, stalled = None, True
                            self.lost.set()
                if not stalled:
                    target.sendall(data)
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def proxy(private_redis) -> Iterator[ReplyLosingProxy]:
    proxy = ReplyLosingProxy(private_redis.port)
    yield proxy
    proxy.close()


@contextmanager
def worker_on(redis_url: str, database: Database, channel: RecordingChannel, tmp_path) -> Iterator[Settings]:
    """A real Dramatiq worker with the delivery actor, whose Redis calls time out after `SOCKET_TIMEOUT`."""
    settings = Settings.from_env(settings_env(database, redis_url, QUEUE, WJP_OUTBOX_DIR=str(tmp_path / "outbox")))
    broker = make_broker(redis_url, timeout=SOCKET_TIMEOUT)
    delivery = Delivery(
        database=database, dispatcher=Dispatcher(broker, QUEUE), channels={"log": channel}, settings=settings
    )
    declare_actor(broker, delivery, settings)
    worker = Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        yield settings
    finally:
        worker.stop()
        broker.close()


def leased(client: redis.Redis, rid: str) -> bool:
    return any(client.sismember(key, rid) for key in client.scan_iter(f"{NAMESPACE}:__acks__.*.{QUEUE}"))


def test_messages_whose_fetch_reply_was_lost_are_delivered_by_the_live_worker_without_a_reconciler(
    postgres_db, private_redis, proxy, tmp_path
):
    # The fetch ran in Redis (the messages were leased to the worker) but its reply never reached the worker: nothing
    # in the live process holds them, Dramatiq's maintenance only requeues dead workers' leases, and the reconciler
    # finds their bodies in Redis. The consumer Dramatiq restarts after the timeout must put them back.
    client = redis.Redis(port=private_redis.port)
    sender = Dispatcher(make_broker(private_redis.url), QUEUE)
    channel = RecordingChannel()
    with worker_on(proxy.url, postgres_db, channel, tmp_path) as settings:
        jobs = [submit(postgres_db, None, settings) for _ in range(3)]
        proxy.lose_reply_holding(f'"queue_name":"{QUEUE}"'.encode())
        now = utcnow()
        sender.send([Dispatch(job, 1, now) for job in jobs], now=now)
        assert proxy.lost.wait(timeout=20), "the worker fetched the messages"
        assert any(leased(client, f"{job}.1") for job in jobs), "the lost reply leased messages to the live worker"

        for job in jobs:
            assert wait_for_status(postgres_db, job, timeout=30).status is Status.SUCCESS
    assert [channel.count(job) for job in jobs] == [1, 1, 1]
    assert not any(leased(client, f"{job}.1") for job in jobs)


def test_a_consumer_that_starts_sends_the_acks_waiting_before_returning_the_leases(private_redis):
    # A message a worker thread finished is done: put back with the leases, it would only be fetched to be dropped.
    client = redis.Redis(port=private_redis.port)
    broker = make_broker(private_redis.url)
    now = utcnow()
    done, fetched = Dispatch(uuid.uuid4(), 1, now), Dispatch(uuid.uuid4(), 1, now)
    Dispatcher(broker, QUEUE).send([done, fetched], now=now)
    consumer = broker.consume(QUEUE, prefetch=2, timeout=50)
    first = next(consumer)
    next(consumer)
    consumer.ack(first)
    rid = first.options["redis_message_id"]

    broker.consume(QUEUE, prefetch=2, timeout=50)

    assert not client.hexists(f"{NAMESPACE}:{QUEUE}.msgs", rid)
    other = f"{fetched.job_id}.1" if rid == f"{done.job_id}.1" else f"{done.job_id}.1"
    assert client.lrange(f"{NAMESPACE}:{QUEUE}", 0, -1) == [other.encode()]
    assert not leased(client, other)
