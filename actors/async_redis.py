"""redis.asyncio clients for the API's Redis calls made on its event loop (the producers' rate limits)."""

from __future__ import annotations

import asyncio
import weakref

import redis
import redis.asyncio
import redis.asyncio.sentinel

from actors.broker import REDIS_TIMEOUT
from actors.redis_address import SENTINEL_SCHEME, parse_sentinel_url


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
