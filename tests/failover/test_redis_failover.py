"""`REDIS_URL` naming Sentinels: the dispatcher (the API's and the reconciler's), the API's rate limiter and a
worker's consumer follow a failover of the master by themselves, without a restart. Real servers: a master, a
replica and three Sentinels; the master is killed with kill -9 and the Sentinels promote the replica."""

from __future__ import annotations

import asyncio
import time
import uuid

import redis
import redis.asyncio
from dramatiq.errors import ConnectionClosed

from actors.async_redis import AsyncRedis
from actors.broker import NAMESPACE, RID_OPTION, BrokerUnavailable, Dispatcher, make_broker, redis_message_id
from actors.ratelimit import RateLimiter
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from tests.failover.servers import SentinelGroup

QUEUE = "failover"


def send_until_sent(dispatcher: Dispatcher, dispatch: Dispatch, timeout: float = 30.0) -> int:
    """Send as the API and the reconciler do, again while Redis is unavailable: the failed tries."""
    failures = 0
    deadline = time.monotonic() + timeout
    while True:
        try:
            dispatcher.send([dispatch], now=utcnow())
            return failures
        except BrokerUnavailable:
            failures += 1
            assert time.monotonic() < deadline, "the dispatcher never reached the new master"
            time.sleep(0.1)


def fetch(dispatcher: Dispatcher, consumer, timeout: float = 30.0):
    """The next message, recreating the consumer on a lost connection as Dramatiq's worker does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = next(consumer)
        except ConnectionClosed:
            time.sleep(0.1)
            consumer = dispatcher.broker.consume(QUEUE, prefetch=4, timeout=100)
            continue
        if message is not None:
            return message, consumer
    raise AssertionError("no message fetched")


def test_the_dispatcher_and_a_consumer_follow_the_master_the_sentinels_promote(sentinel_group: SentinelGroup):
    dispatcher = Dispatcher(make_broker(sentinel_group.url, timeout=2.0), QUEUE)
    consumer = dispatcher.broker.consume(QUEUE, prefetch=4, timeout=100)
    before = Dispatch(uuid.uuid4(), 1, utcnow())
    send_until_sent(dispatcher, before)
    message, consumer = fetch(dispatcher, consumer)
    assert message.options[RID_OPTION] == redis_message_id(before)
    old_master = sentinel_group.master.port

    sentinel_group.master.kill()
    new_master = sentinel_group.wait_for_new_master(old_master)
    after = Dispatch(uuid.uuid4(), 1, utcnow())
    send_until_sent(dispatcher, after)

    # The same dispatcher wrote it to the promoted replica, and the same broker's consumer reads it from there.
    client = redis.Redis(port=new_master)
    assert client.hexists(f"{NAMESPACE}:{QUEUE}.msgs", redis_message_id(after))
    message, consumer = fetch(dispatcher, consumer)
    assert message.options[RID_OPTION] == redis_message_id(after)
    assert dispatcher.missing([after]) == []
    dispatcher.ping()
    client.close()


def test_the_rate_limiter_follows_the_master_the_sentinels_promote(sentinel_group: SentinelGroup):
    # Its round trips go from the API's event loop, through redis.asyncio's Sentinel-aware pool.
    limiter = RateLimiter(AsyncRedis(sentinel_group.url, timeout=2.0), prefix=f"wjp:test-ratelimit:{uuid.uuid4()}:")
    bucket = f"{limiter.prefix}producer"

    async def spend_until_counted(port: int, timeout: float = 30.0) -> None:
        """Spend as the API does (while Redis is unreachable, admitted) until the master on `port` holds the bucket."""
        client = redis.asyncio.Redis(port=port)
        deadline = time.monotonic() + timeout
        while not await client.exists(bucket):
            assert time.monotonic() < deadline, f"the limiter never wrote its bucket to the master on {port}"
            await limiter.wait("producer", rate=0.01)  # a bucket that takes 100 s to fill lives that long
            await asyncio.sleep(0.1)
        await client.aclose()

    async def across_the_failover() -> None:
        await spend_until_counted(sentinel_group.master.port)
        old_master = sentinel_group.master.port
        sentinel_group.master.kill()
        await spend_until_counted(await asyncio.to_thread(sentinel_group.wait_for_new_master, old_master))

    asyncio.run(across_the_failover())
