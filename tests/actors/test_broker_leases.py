"""What a live worker leases in Redis comes back to it: messages whose fetch reply was lost on the way, and the copy
a worker thread enqueues under the id of the message it is processing."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from queue import PriorityQueue

import pytest
import redis
from dramatiq import Worker
from dramatiq.broker import MessageProxy
from dramatiq.common import current_millis
from dramatiq.worker import ConsumerThread, WorkerThread

from actors.actor import declare_actor
from actors.broker import NAMESPACE, Dispatcher, make_broker
from actors.delivery import Delivery
from actors.settings import Settings
from ledger.database import Database
from ledger.states import Status
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from tests.actors.conftest import RecordingChannel, submit, wait_for_status
from tests.conftest import free_port, settings_env

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


class SteppedProcess:
    """The parts of one worker process, on Dramatiq's own consumer and worker thread code, driven a step at a time
    so that a test can order what real threads of two processes do."""

    def __init__(self, redis_url: str, database: Database, channel: RecordingChannel, settings: Settings) -> None:
        self.broker = make_broker(redis_url)
        delivery = Delivery(
            database=database, dispatcher=Dispatcher(self.broker, QUEUE), channels={"log": channel}, settings=settings
        )
        declare_actor(self.broker, delivery, settings)
        self.work: PriorityQueue[object] = PriorityQueue()
        self.queue = self._consumer_thread(QUEUE, prefetch=1)
        self.delay_queue = self._consumer_thread(f"{QUEUE}.DQ", prefetch=10)
        self.worker = WorkerThread(
            broker=self.broker, consumers={QUEUE: self.queue}, work_queue=self.work, worker_timeout=100
        )  # type: ignore[arg-type]

    def _consumer_thread(self, queue: str, prefetch: int) -> ConsumerThread:
        thread = ConsumerThread(
            broker=self.broker, queue_name=queue, prefetch=prefetch, work_queue=self.work, worker_timeout=100
        )  # type: ignore[arg-type]
        thread.consumer = self.broker.consume(queue, prefetch=prefetch, timeout=50)
        return thread

    def fetch(self) -> MessageProxy | None:
        assert self.queue.consumer is not None
        return next(self.queue.consumer)

    def process(self, message: MessageProxy) -> None:
        """What a worker thread does with a message: middleware, the actor, then the (deferred) ack."""
        self.work.put(None)  # counted as Dramatiq's work queue counts it: the worker thread marks it done
        self.worker.process_message(message)

    def promote_when_due(self) -> None:
        """What the delay-queue consumer thread does: fetch the delayed message, hold it, enqueue it when due."""
        assert self.delay_queue.consumer is not None
        message = next(self.delay_queue.consumer)
        assert message is not None, "a copy on the delay queue"
        self.delay_queue.handle_message(message)
        time.sleep(max(0.0, (message.options["eta"] - current_millis()) / 1000))
        self.delay_queue.handle_delayed_messages()

    def close(self) -> None:
        """What Dramatiq's worker does with its queue's consumer as it stops: the acks still due go."""
        assert self.queue.consumer is not None
        self.queue.consumer.close()


def test_an_early_message_sent_again_under_its_id_is_not_deleted_by_the_originals_late_ack(
    postgres_db, private_redis, tmp_path
):
    # The job is due in a moment, but its message arrives now (a sender whose clock runs ahead): the worker sends it
    # again under the same id, to wait in the delay queue. Another process moves the copy to the queue when it is
    # due, before this worker's deferred ack of the original went: that ack must not delete the copy's body.
    client = redis.Redis(port=private_redis.port)
    settings = Settings.from_env(
        settings_env(postgres_db, private_redis.url, QUEUE, WJP_OUTBOX_DIR=str(tmp_path / "outbox"))
    )
    channel = RecordingChannel()
    first, second = (SteppedProcess(private_redis.url, postgres_db, channel, settings) for _ in range(2))
    now = utcnow()
    job = submit(postgres_db, None, settings, send_at=now + timedelta(seconds=1))
    Dispatcher(make_broker(private_redis.url), QUEUE).send([Dispatch(job, 1, now)], now=now)
    message = first.fetch()
    assert message is not None

    first.process(message)
    assert client.hexists(f"{NAMESPACE}:{QUEUE}.DQ.msgs", f"{job}.1"), "sent again, to wait for its time"
    second.promote_when_due()
    first.close()

    assert client.hexists(f"{NAMESPACE}:{QUEUE}.msgs", f"{job}.1")
    copy = second.fetch()
    assert copy is not None
    second.process(copy)
    assert wait_for_status(postgres_db, job, timeout=10).status is Status.SUCCESS
    assert channel.count(job) == 1


def test_dramatiqs_retry_of_a_message_that_met_a_ledger_outage_is_not_deleted_by_the_originals_late_ack(
    postgres_db, private_redis, tmp_path
):
    # A worker whose ledger is unreachable (nothing listens on its port) leaves the message to Dramatiq's retry,
    # enqueued under the same id on the delay queue. Another process moves the retry to the queue when it is due,
    # before this worker's deferred ack of the original went: that ack must not delete the retry's body.
    client = redis.Redis(port=private_redis.port)
    settings = Settings.from_env(
        settings_env(postgres_db, private_redis.url, QUEUE, WJP_OUTBOX_DIR=str(tmp_path / "outbox"))
    )
    channel = RecordingChannel()
    unreachable = Database(f"postgresql://postgres@127.0.0.1:{free_port()}/ledger", pool_size=1)
    cut_off = SteppedProcess(private_redis.url, unreachable, channel, settings)
    other = SteppedProcess(private_redis.url, postgres_db, channel, settings)
    job = submit(postgres_db, Dispatcher(make_broker(private_redis.url), QUEUE), settings)
    message = cut_off.fetch()
    assert message is not None

    cut_off.process(message)
    assert client.hexists(f"{NAMESPACE}:{QUEUE}.DQ.msgs", f"{job}.1"), "Dramatiq's retry, under the same id"
    other.promote_when_due()
    cut_off.close()

    assert client.hexists(f"{NAMESPACE}:{QUEUE}.msgs", f"{job}.1")
    retry = other.fetch()
    assert retry is not None
    other.process(retry)
    assert wait_for_status(postgres_db, job, timeout=10).status is Status.SUCCESS
    assert channel.count(job) == 1


def test_a_message_sent_again_under_its_id_then_rejected_leaves_the_copy_in_the_queue(private_redis):
    # Rejecting the original dead-letters the body under its id, which is by then the copy's.
    client = redis.Redis(port=private_redis.port)
    broker = make_broker(private_redis.url)
    dispatcher = Dispatcher(broker, QUEUE)
    now = utcnow()
    dispatch = Dispatch(uuid.uuid4(), 1, now)
    dispatcher.send([dispatch], now=now)
    consumer = broker.consume(QUEUE, prefetch=1, timeout=50)
    message = next(consumer)
    assert message is not None

    broker.emit_before("process_message", message)  # as a worker thread takes it
    dispatcher.send([dispatch], now=now)
    message.fail()
    consumer.nack(message)

    assert client.hexists(f"{NAMESPACE}:{QUEUE}.msgs", f"{dispatch.job_id}.1")
    assert client.zcard(f"{NAMESPACE}:{QUEUE}.XQ") == 0
    copy = next(consumer)
    assert copy is not None and copy.options["redis_message_id"] == f"{dispatch.job_id}.1"
