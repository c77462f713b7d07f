"""The API's Redis calls on its event loop (redis.asyncio): the new jobs' dispatch, as `Dispatcher.send` writes it."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable
from datetime import datetime

import redis
import redis.asyncio
import redis.asyncio.sentinel

from actors import tracing
from actors.broker import JOB_MESSAGES, REDIS_TIMEOUT, BrokerUnavailable, Dispatcher, MessageKind
from actors.enqueue import enqueue_commands, raise_failed
from actors.redis_address import SENTINEL_SCHEME, parse_sentinel_url
from ledger.transitions import Dispatch


class AsyncRedis:
    """redis.asyncio clients of the Redis at `url`, one per event loop (a connection serves the loop it was opened
    on), with the sync pool's timeouts and health checks (`connection_pool`), behind Sentinels too."""

    def __init__(self, url: str, *, timeout: float = REDIS_TIMEOUT, health_check: int = 30) -> None:
        self.url = url
        self._options = {
            "socket_timeout": timeout, "socket_connect_timeout": timeout, "health_check_interval": health_check,
        }  # fmt: skip
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
            weakref.WeakKeyDictionary()
        )

    def client(self) -> redis.asyncio.Redis:
        """The running loop's client."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = redis.asyncio.Redis(connection_pool=self._pool())
        return client

    def _pool(self) -> redis.asyncio.ConnectionPool:
        if not self.url.startswith(f"{SENTINEL_SCHEME}://"):
            return redis.asyncio.ConnectionPool.from_url(self.url, **self._options)
        address = parse_sentinel_url(self.url)
        timeouts = {name: self._options[name] for name in ("socket_timeout", "socket_connect_timeout")}
        manager = redis.asyncio.sentinel.Sentinel(list(address.sentinels), sentinel_kwargs=timeouts)
        return redis.asyncio.sentinel.SentinelConnectionPool(
            address.service,
            manager,
            db=address.db,
            username=address.username,
            password=address.password,
            **self._options,
        )


class AsyncDispatcher:
    """`dispatcher.send` on the event loop: the same messages (`Dispatcher.messages`) and the same MULTI
    (`enqueue_commands`), sent through redis.asyncio instead of a thread. For the API only, whose broker
    processes no message (no ack rides with a send, as a worker's may: `OutageProofRedisBroker.enqueue_many`)."""

    def __init__(self, dispatcher: Dispatcher, redis_: AsyncRedis) -> None:
        self.dispatcher = dispatcher
        self.redis = redis_

    async def send(self, dispatches: Iterable[Dispatch], *, now: datetime, kind: MessageKind = JOB_MESSAGES) -> int:
        """As `Dispatcher.send`: one round trip, `BrokerUnavailable` when Redis is unreachable."""
        messages, traced = self.dispatcher.messages(dispatches, now=now, kind=kind)
        if not messages:
            return 0
        commands = [("MULTI",), *enqueue_commands(self.dispatcher.broker.namespace, messages), ("EXEC",)]
        try:
            with traced or tracing.NO_SPAN:
                raise_failed((await self._exchange(commands))[-1])
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable(f"Redis unreachable: {exc}") from exc
        return len(messages)

    async def _exchange(self, commands: list[tuple[object, ...]]) -> list[object]:
        """`commands` in one write on a pooled connection, and their replies (see `OutageProofRedisBroker._exchange`:
        a connection that fails under them is closed, never pooled with replies unread)."""
        pool = self.redis.client().connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(conn.pack_commands(commands))
            return [await conn.read_response() for _ in commands]
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)
