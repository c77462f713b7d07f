"""The Redis broker, and the dispatcher that sends each job's message under an id the ledger can name."""

from __future__ import annotations

import collections
import logging
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker
from dramatiq.common import current_millis, dq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import CurrentMessage, Middleware, Retries, TimeLimit

from actors import resp, tracing
from actors.consumer import BELL_TOKENS, CONNECTION_LOST, NAMESPACE, BelledConsumer, NoteWorkerThreads, bell_key
from actors.hooks import SignalsToHooks
from actors.messages import DEST_OPTION as DEST_OPTION
from actors.messages import RID_OPTION, MessageKind, MessageWriter, Outgoing, rid_text
from actors.redis_address import connection_pool
from actors.settings import TIME_LIMIT_CHECK_MS, SettingsError
from ledger.transitions import Dispatch

log = logging.getLogger("wjp.dispatch")

#: The delivery actor's name; the API and the reconciler send to it without importing it.
ACTOR_NAME = "deliver"
#: Seconds a Redis call may take before the caller treats Redis as unreachable.
REDIS_TIMEOUT = 5.0
#: SHA-1 of the dispatch.lua of the Dramatiq this transport was tested with (constraints.txt pins it): the broker
#: builds that script's calls itself and relies on its keys (tests/actors/test_broker_contract.py).
TESTED_DISPATCH_SHA = "fdacc359c79a5adc3b8eeb53ff5772d7c42144e3"


class UntestedDramatiq(SettingsError):
    """The installed Dramatiq's Redis script is not the one the transport was tested with."""


class BrokerUnavailable(Exception):
    """Redis could not be reached; the ledger still holds the job and a reconciler pass will send it."""


def redis_message_id(dispatch: Dispatch) -> str:
    return f"{dispatch.job_id}.{dispatch.seq}"


#: A job's delivery attempt: the default of `Dispatcher.send` and `Dispatcher.missing`.
JOB_MESSAGES = MessageKind(ACTOR_NAME, redis_message_id)


def parse_redis_message_id(rid: str) -> tuple[uuid.UUID, int]:
    """Split "<job id>.<seq>" as `redis_message_id` writes it: a canonical UUID and a seq the ledger's INTEGER
    can hold (1 to 2^31 - 1); raise ValueError for anything else, which no claim statement may carry."""
    job_id, _, seq = rid.rpartition(".")
    parsed = uuid.UUID(job_id)
    if str(parsed) != job_id or not (seq.isascii() and seq.isdigit()) or len(seq) > 10 or str(int(seq)) != seq:
        raise ValueError(f"not the Redis id of a dispatch: {rid!r}")
    number = int(seq)
    if not 1 <= number <= 2**31 - 1:
        raise ValueError(f"dispatch seq out of range: {rid!r}")
    return parsed, number


class PinRedisMessageId(Middleware):
    """Keep a message's Redis id across Dramatiq's delay-queue promotions and its own retries.

    Dramatiq draws a fresh id at every enqueue; pinning it to the dispatch means the message of a
    dispatch has one name wherever it sits (queue, delay queue, a worker's lease), so the reconciler
    finds it with one HEXISTS, and a copy from an older dispatch can never claim the job.
    """

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int | None) -> None:
        rid = message.options.get(RID_OPTION)
        if rid:
            message.options["redis_message_id"] = rid


class _Processing(threading.local):
    """The message a worker thread processes, and whether its ack went to Redis with a copy enqueued under its id."""

    message: MessageProxy | None = None
    acked: bool = False


class NoteProcessedMessage(Middleware):
    """Tell the broker which message each worker thread processes, until the thread acks or nacks it.

    Dramatiq's `CurrentMessage` cannot: after-hooks run in reverse order, so it forgets the message before the
    `Retries` middleware enqueues its copy."""

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        assert isinstance(broker, OutageProofRedisBroker)
        broker.processing.message, broker.processing.acked = message, False


class OutageProofRedisBroker(SignalsToHooks, RedisBroker):
    """Dramatiq's Redis broker, made to ride out a Redis outage in a worker without losing delayed messages.

    Dramatiq's consumer threads recover only from its own `ConnectionClosed`: a raw redis-py error while a worker
    moved a due delayed message to its queue (or put leases back) killed its delay-queue consumer for good. And on
    a lost connection, a delay-queue consumer drops the delayed messages it holds in memory; they stay leased to
    this live worker in Redis, where neither Dramatiq's maintenance (dead workers only) nor the reconciler (the
    message is in Redis) would ever bring them back.
    """

    def __init__(self, *args: Any, redis_url: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Where its Redis is, for the API's redis.asyncio clients (`actors.async_redis`).
        self.redis_url = redis_url
        sha = self.scripts["dispatch"].sha
        if sha != TESTED_DISPATCH_SHA:
            raise UntestedDramatiq(
                f"Dramatiq {dramatiq.__version__}'s dispatch.lua has SHA-1 {sha}, the transport was tested with "
                f"{TESTED_DISPATCH_SHA}; install the tested Dramatiq with pip install -c constraints.txt"
            )
        self._unsent_acks: dict[str, collections.deque[str]] = {}
        self.processing = _Processing()
        #: Its worker's threads (`NoteWorkerThreads`); none known outside a worker.
        self.worker_threads = 0

    def _dispatch(self, command: str) -> Callable[..., object]:
        dispatch = super()._dispatch(command)

        def dispatch_or_closed(*args: object) -> object:
            try:
                if command == "enqueue":
                    return self._enqueue_after_ack(dispatch, *args)
                return dispatch(*args)
            except CONNECTION_LOST as exc:
                raise ConnectionClosed(exc) from None

        return dispatch_or_closed

    def _enqueue_after_ack(self, enqueue: Callable[..., object], queue_name: str, rid: str, data: bytes) -> None:
        """Dramatiq's enqueue (its retries, delay-queue promotions, actors' sends), after the ack of the message this
        thread processes when `rid` is its id (`ack_before_reenqueue`), in the same transaction."""
        ack = self._ack_before_reenqueue([rid])
        if ack is None:
            enqueue(queue_name, rid, data)
            return
        commands = [("MULTI",), ack, self._script_command("enqueue", queue_name, rid, data), ("EXEC",)]
        self._transact([resp.pack(command) for command in commands])  # type: ignore[arg-type]
        self.processing.acked = True

    def _ack_before_reenqueue(self, rids: Collection[str]) -> tuple[object, ...] | None:
        """The ack of the message this worker thread processes, if one of `rids` is its id: a copy enqueued under it
        (Dramatiq's retry, `Dispatcher.send` of its own dispatch) must not meet the original's deferred ack, which
        would delete the copy's body once the copy sits in the queue's hash (a delay-queue copy gets there when it
        is due, perhaps through another process). The consumer then skips the ack (`forget_processed`).

        `EVAL`, not `EVALSHA`: in a MULTI, a script Redis lost fails alone, and the enqueue would go without it."""
        message = self.processing.message
        if message is None or self.processing.acked or message.options.get("redis_message_id") not in rids:
            return None
        return self._script_command("ack", message.queue_name, message.options["redis_message_id"])

    def forget_processed(self, message: MessageProxy) -> bool:
        """Called as a worker thread acks or nacks `message`: say whether its ack already went with a copy."""
        if self.processing.message is not message:
            return False
        acked = self.processing.acked
        self.processing.message, self.processing.acked = None, False
        return acked

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> dramatiq.Consumer:
        self._return_own_leases(queue_name)
        if dq_name(queue_name) == queue_name:
            return super().consume(queue_name, prefetch, timeout)
        return BelledConsumer(self, queue_name, prefetch, timeout)

    def _return_own_leases(self, queue_name: str) -> None:
        """A consumer starts holding nothing, so whatever this process still leases from its queue was fetched
        before it: by a consumer that dropped its cache on a lost connection, by a fetch whose reply was lost (held
        by no one), or handed to a worker thread. Neither Dramatiq's maintenance (dead workers only) nor the
        reconciler (the body is in Redis) would bring the first two back, so all of it goes back to the queue, after
        the acks waiting to be sent (those messages are done). A copy of a message still in a worker thread's hands
        is then dropped at its claim, which is fenced on the dispatch number: it is never delivered twice."""
        try:
            self.ack_and_fetch(queue_name, 0)
            leased = self.client.smembers(f"{self.namespace}:__acks__.{self.broker_id}.{queue_name}")
        except CONNECTION_LOST as exc:
            raise ConnectionClosed(exc) from None
        if leased:
            log.warning("returning %d messages this worker leased to %s", len(leased), queue_name)
            self.do_requeue(queue_name, *(rid.decode() for rid in leased))

    def enqueue_many(self, messages: Sequence[Outgoing]) -> None:
        """Enqueue each message as Dramatiq's enqueue script would, all in one round trip: per queue, the bodies
        into its hash and then the ids onto its list, in one MULTI; for a queue that is not a delay queue, a token on
        its bell too, which wakes an idle consumer (`BelledConsumer`).

        Atomic, as the script is: a body without its id on the list would look queued to `Dispatcher.missing`
        and never be delivered; an id without its body would be dropped by the consumer. What the script does
        besides (a heartbeat under the sender's id, and maintenance by chance) concerns consumers, not senders.
        """
        by_queue: dict[str, dict[bytes, bytes]] = {}
        for queue_name, rid, entry in messages:
            by_queue.setdefault(queue_name, {})[rid] = entry
        # Only a worker thread processes a message: the API never has one, nor the ids' text to spend on it.
        ack = None
        if self.processing.message is not None:
            ack = self._ack_before_reenqueue({rid_text(rid) for _, rid, _ in messages})
        commands = [resp.pack(("MULTI",)), *([resp.pack(ack)] if ack else [])]  # type: ignore[arg-type]
        for queue_name, entries in by_queue.items():
            key = f"{self.namespace}:{queue_name}"
            hashed = resp.Packed.bulks(2 * len(entries), b"".join(entries.values()))
            commands.append(resp.command("HSET", f"{key}.msgs", hashed))
            commands.append(resp.command("RPUSH", key, resp.Packed.bulks(len(entries), b"".join(entries))))
            if dq_name(queue_name) != queue_name:
                commands.append(resp.pack(("RPUSH", bell_key(queue_name), 1)))
                commands.append(resp.pack(("LTRIM", bell_key(queue_name), -BELL_TOKENS, -1)))
        commands.append(resp.pack(("EXEC",)))
        self._transact(commands)
        if ack:
            self.processing.acked = True

    def _transact(self, commands: list[bytes]) -> None:
        """Send a MULTI … EXEC, its commands packed (`actors.resp`), and raise the first error it met."""
        executed = resp.exchange(self.client, commands)[-1]
        if executed is None:
            raise redis.ResponseError("the transaction was aborted")
        for reply in executed:
            if isinstance(reply, Exception):
                raise reply

    def _exchange(self, commands: list[tuple[object, ...]]) -> list[object]:
        """Send `commands` in one write on a pooled connection and read their replies (`actors.resp`).

        redis-py's pipelines do the same with much more bookkeeping per command: its transaction pipeline was the
        largest part of an API process's CPU for a POST (bench/README.md)."""
        return resp.exchange(self.client, [resp.pack(command) for command in commands])  # type: ignore[arg-type]

    def unsent_acks(self, queue_name: str) -> collections.deque[str]:
        """The Redis ids of the messages of `queue_name` this process's threads have acked, not yet sent."""
        return self._unsent_acks.setdefault(queue_name, collections.deque())

    def ack_and_fetch(self, queue_name: str, count: int) -> list[bytes]:
        """Dramatiq's ack of each of the unsent acks of `queue_name`, then (with `count`) its fetch of up to `count`
        messages, in one round trip: their commands of Dramatiq's dispatch script, with the arguments its
        `_dispatch` gives them. Acks that may not have reached Redis wait for the next call.

        The acks of a moment ride with the consumer's next fetch: an ack round trip per message was a seventh of a
        worker's CPU, and sending them in a round trip of their own cost 0.2-0.4 more round trips per job at
        moderate rates (bench/README.md)."""
        unsent = self.unsent_acks(queue_name)
        acks = [unsent.popleft() for _ in range(len(unsent))]
        if not acks and not count:
            return []
        commands = [self._script_command("ack", queue_name, rid, sha=True) for rid in acks]
        if count:
            commands.append(self._script_command("fetch", queue_name, count, sha=True))
        try:
            try:
                replies = self._exchange(commands)
            except redis.exceptions.NoScriptError:
                # Redis lost its scripts (a restart), so none of these ran: load it again, as redis-py's Script does.
                self.client.script_load(self.scripts["dispatch"].script)
                replies = self._exchange(commands)
        except BaseException:
            unsent.extendleft(reversed(acks))
            raise
        return replies[-1] if count else []  # type: ignore[return-value]

    def _script_command(self, command: str, queue_name: str, *args: object, sha: bool = False) -> tuple[object, ...]:
        """The call of Dramatiq's dispatch script `_dispatch` makes, as `EVALSHA` or (by default) `EVAL`."""
        script = self.scripts["dispatch"]
        call = ("EVALSHA", script.sha) if sha else ("EVAL", script.script)
        return (
            *call, 1, self.namespace, command, current_millis(), queue_name, self.broker_id,
            self.heartbeat_timeout, self.dead_message_ttl, self._should_do_maintenance(command),
            self._max_unpack_size(), *args,
        )  # fmt: skip


def make_broker(redis_url: str, *, timeout: float = REDIS_TIMEOUT, **options: object) -> OutageProofRedisBroker:
    """A RedisBroker whose Redis calls give up after `timeout` seconds, with message-id pinning and access to the
    current message, that keeps its messages across a Redis outage and, behind Sentinels, follows a failover."""
    pool = connection_pool(redis_url, timeout=timeout)
    # Only the middleware we rely on: each one runs hooks on every message.
    limit = TimeLimit(interval=TIME_LIMIT_CHECK_MS)
    middleware = [
        limit, Retries(), PinRedisMessageId(), CurrentMessage(), NoteProcessedMessage(), NoteWorkerThreads()
    ]
    return OutageProofRedisBroker(
        connection_pool=pool, namespace=NAMESPACE, middleware=middleware, redis_url=redis_url, **options
    )


class Dispatcher:
    """Sends dispatches recorded in the ledger to Redis, and checks whether their messages are still there."""

    def __init__(self, broker: OutageProofRedisBroker, queue: str) -> None:
        self.broker = broker
        self.queue = queue
        self._maintenance: RedisBroker | None = None
        broker.declare_queue(queue)

    def send(self, dispatches: Iterable[Dispatch], *, now: datetime, kind: MessageKind = JOB_MESSAGES) -> int:
        """Enqueue each dispatch, delayed until it is due, in one round trip; raise `BrokerUnavailable` if Redis
        is unreachable (then some of them may have been sent: a later send of one is dropped by its claim).

        The messages are written where and as Dramatiq's `enqueue` would write them (same keys, bodies its decoder
        reads as the same messages, the Redis id pinned to the dispatch), without its two copies of each message,
        its enqueue hooks and a Lua call per message, none of which we need: most of the CPU of a send
        (bench/README.md).
        """
        dispatches = dispatches if isinstance(dispatches, list) else list(dispatches)
        traced = tracing.enqueued()
        messages = MessageWriter(self.queue, kind, current_millis()).write(dispatches, now=now, traced=traced)
        if not messages:
            return 0
        try:
            with traced or tracing.NO_SPAN:
                self.broker.enqueue_many(messages)
        except (redis.RedisError, ConnectionClosed) as exc:
            raise BrokerUnavailable(f"Redis unreachable: {exc}") from exc
        return len(messages)

    def missing(self, dispatches: list[Dispatch], kind: MessageKind = JOB_MESSAGES) -> list[Dispatch]:
        """The dispatches whose message is in neither the queue nor the delay queue (nor a worker's lease,
        which keeps the body in the queue's hash). O(1) per dispatch, read atomically."""
        if not dispatches:
            return []
        delayed = f"{NAMESPACE}:{self.queue}.DQ.msgs"
        queued = f"{NAMESPACE}:{self.queue}.msgs"
        pipe = self.broker.client.pipeline(transaction=True)
        for dispatch in dispatches:
            rid = kind.message_id(dispatch)
            # Delay queue first: a promotion writes the queue's copy before dropping the delayed one.
            pipe.hexists(delayed, rid)
            pipe.hexists(queued, rid)
        try:
            found = pipe.execute()
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"Redis unreachable: {exc}") from exc
        return [d for i, d in enumerate(dispatches) if not (found[2 * i] or found[2 * i + 1])]

    def requeue_abandoned(self) -> None:
        """Return messages leased by worker processes that stopped heart-beating to their queues now,
        instead of waiting for Dramatiq's random maintenance (it runs on 0.1 % of calls)."""
        if self._maintenance is None:
            # Maintenance is decided per broker, so a twin broker with certain maintenance does it.
            self._maintenance = RedisBroker(
                client=self.broker.client,
                namespace=NAMESPACE,
                middleware=[],
                maintenance_chance=MAINTENANCE_SCALE,
                heartbeat_timeout=self.broker.heartbeat_timeout,
            )
        try:
            for queue in (self.queue, f"{self.queue}.DQ"):
                self._maintenance.do_qsize(queue)
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"Redis unreachable: {exc}") from exc

    def ping(self) -> None:
        try:
            self.broker.client.ping()
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"Redis unreachable: {exc}") from exc
