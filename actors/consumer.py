"""The consumer of a worker's queue: Dramatiq's Redis consumer, woken by the queue's bell, its acks deferred."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import _RedisConsumer
from dramatiq.common import compute_backoff
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import Middleware

if TYPE_CHECKING:
    from actors.broker import OutageProofRedisBroker

#: Dramatiq's key prefix in Redis.
NAMESPACE = "dramatiq"
#: Redis failures that mean the connection is gone (redis-py's timeout is not a ConnectionError).
CONNECTION_LOST = (redis.ConnectionError, redis.TimeoutError)
#: Tokens a queue's bell holds at most: one wakes one idle consumer, which fetches all it may hold.
BELL_TOKENS = 1
#: Empty fetches in a row after which a consumer whose worker threads are all busy waits on the bell instead of
#: sleeping through its back-off (Dramatiq's 5-10 ms, then 10-20 ms): within those pauses, what arrives is fetched,
#: and claimed, together.
MISSES_BEFORE_BELL = 2


def bell_key(queue_name: str) -> str:
    """The list a sender pushes a token onto after enqueueing, and idle consumers of the queue wait on."""
    return f"{NAMESPACE}:{queue_name}.bell"


class NoteWorkerThreads(Middleware):
    """Tell the broker how many threads its worker runs, so that its consumers know when one is idle."""

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        broker.worker_threads = worker.worker_threads  # type: ignore[attr-defined]


class BelledConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer, but one that, found nothing to fetch, waits on the queue's bell (`BLPOP`)
    instead of sleeping: a message sent by `Dispatcher.send` is fetched at once rather than after Dramatiq's
    back-off of 5 to `timeout` ms, which put tens of ms on a job's way from POST to SUCCESS at any rate that
    leaves the workers idle between messages. Messages enqueued otherwise (Dramatiq's retries, delay-queue
    promotions, requeues) ring no bell and are fetched within the back-off, as before. And its acks go to Redis
    together, with its next fetch."""

    broker: OutageProofRedisBroker

    def ack(self, message: MessageProxy) -> None:
        # Left for the consumer thread, which sends the acks of a moment with its next fetch (`ack_and_fetch`), or
        # alone when it is full or closing. Until then the message stays leased to this live process, which
        # redelivers nothing: a process that dies meanwhile has its leases requeued by Dramatiq, and their claims
        # then find the jobs taken.
        if not self.broker.forget_processed(message):
            self.broker.unsent_acks(self.queue_name).append(message.options["redis_message_id"])
        self.queued_message_ids.discard(message.message_id)

    def nack(self, message: MessageProxy) -> None:
        if self.broker.forget_processed(message):
            # Acked with the copy enqueued under its id: a dead letter now would be the copy's.
            self.queued_message_ids.discard(message.message_id)
        else:
            super().nack(message)

    def close(self) -> None:
        try:
            self.broker.ack_and_fetch(self.queue_name, 0)
        except CONNECTION_LOST as exc:
            raise ConnectionClosed(exc) from None

    def __next__(self) -> MessageProxy | None:
        try:
            if not self.message_cache:
                # When full, only the acks go: what frees room is an ack of this process.
                self.message_cache = self.broker.ack_and_fetch(
                    self.queue_name, max(self.prefetch - self.outstanding_message_count, 0)
                )
            while self.message_cache:
                data = self.message_cache.pop(0)
                if data is None:  # what Dramatiq's consumer skips too (its issue #266)
                    continue
                self.misses = 0
                message = dramatiq.Message.decode(data)
                self.queued_message_ids.add(message.message_id)
                return MessageProxy(message)
            lately_busy = self.misses < MISSES_BEFORE_BELL
            self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
            threads_idle = self.outstanding_message_count < self.broker.worker_threads
            if (lately_busy and not threads_idle) or self.outstanding_message_count >= self.prefetch:
                # A consumer that fetched something moments ago and whose threads are all busy sleeps its first
                # pauses: what it fetches now would wait for a thread anyway, and what comes meanwhile is fetched
                # together. One with a thread idle waits on the bell at once: a sleep only delayed the next message
                # (bench/README.md, 2026-12-03 20:10). When full, what frees room is an ack of this process.
                time.sleep(backoff_ms / 1000)
            else:
                self.broker.client.blpop([bell_key(self.queue_name)], timeout=backoff_ms / 1000)
            return None
        except CONNECTION_LOST as exc:
            raise ConnectionClosed(exc) from None
