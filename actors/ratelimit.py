"""Producer rate limits: a token bucket per API key in Redis (ratelimit.lua), shared by every API process.

A process that submits much for one key takes a few tokens ahead with each round trip, sized by its own demand
(what it spent of that key in the last ALLOWANCE_SECONDS), and spends them without asking Redis; what it has not
spent goes back with its next round trip. A key submitting little costs one EVALSHA per request, as exactly as
before; one submitting a lot costs about one per ALLOWANCE_SECONDS per process.

It fails open: intake answers while Redis is down (the ledger holds the jobs), so a limit Redis cannot check
admits the request; the outage is logged once, and its end once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import redis

from actors.async_redis import AsyncRedis

log = logging.getLogger("wjp.api")

#: Every bucket's key starts with this, followed by the API key's scope (its id).
DEFAULT_PREFIX = "wjp:ratelimit:"
#: A process takes ahead at most this long's worth of its own demand (and of the rate); what it took and did not
#: spend within it goes back.
ALLOWANCE_SECONDS = 0.05
#: The shortest time a demand is measured over: two requests closer than this count as this far apart.
DEMAND_RESOLUTION = 0.001


@dataclass
class _Allowance:
    """One key's tokens taken ahead by this process."""

    tokens: int = 0
    #: Monotonic time after which the tokens are not spent but given back.
    until: float = -math.inf
    #: What this process spent of the key since `since` (its last round trip): its demand.
    spent: int = 0
    since: float = -math.inf


class RateLimiter:
    """Admits a producer's requests at `rate` per second, bursts up to one second's worth, for every API process
    sharing the Redis at once. Its round trips go through redis.asyncio, on the caller's event loop (any number of
    loops, on any threads)."""

    def __init__(
        self, redis_: AsyncRedis, prefix: str = DEFAULT_PREFIX, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._source = resources.files(__package__).joinpath("ratelimit.lua").read_text(encoding="utf-8")
        self._sha = hashlib.sha1(self._source.encode()).hexdigest()
        self.redis = redis_
        self.prefix = prefix
        self._monotonic = monotonic
        self._allowances: dict[str, _Allowance] = {}
        self._lock = threading.Lock()
        self._down = False

    async def wait(self, scope: str, rate: float, cost: int = 1) -> float:
        """0.0 when `scope` may spend `cost` now (and it is spent), else the seconds until it may. `cost` is the
        number of notifications of the request: one for a single POST, each item of a batch."""
        if not rate > 0 or cost < 1:
            raise ValueError("rate must be positive and cost at least 1")
        now = self._monotonic()
        with self._lock:
            allowance = self._allowances.setdefault(scope, _Allowance(since=now))
            if allowance.tokens >= cost and now < allowance.until:
                allowance.tokens -= cost
                allowance.spent += cost
                return 0.0
            # Taken out under the lock: a caller racing this one gives back none of them a second time.
            unspent, allowance.tokens = allowance.tokens, 0
            demand = allowance.spent / max(now - allowance.since, DEMAND_RESOLUTION)
            allowance.spent, allowance.since = 0, now
        ahead = math.floor(min(demand, rate) * ALLOWANCE_SECONDS)
        try:
            wait_ms, granted = await self._bucket(self.prefix + scope, repr(float(rate)), cost, ahead, unspent)
        except (redis.RedisError, OSError) as exc:
            self._note_outage(exc)
            return 0.0
        if self._down:
            self._note_recovery()
        with self._lock:
            if wait_ms == 0:
                allowance.spent += cost
                allowance.tokens += int(granted)
                allowance.until = now + ALLOWANCE_SECONDS
        return int(wait_ms) / 1000

    async def _bucket(self, key: str, *args: object) -> list[int]:
        """ratelimit.lua on `key`: EVALSHA, loading the script once when Redis has lost it (a restart), as redis-py's
        Script does."""
        client = self.redis.client()
        try:
            return await client.evalsha(self._sha, 1, key, *args)  # type: ignore[no-any-return]
        except redis.exceptions.NoScriptError:
            await client.script_load(self._source)
            return await client.evalsha(self._sha, 1, key, *args)  # type: ignore[no-any-return]

    def _note_outage(self, exc: Exception) -> None:
        with self._lock:
            if self._down:
                return
            self._down = True
        log.warning("rate limits are not enforced while Redis is unreachable: %s", exc)

    def _note_recovery(self) -> None:
        with self._lock:
            if not self._down:
                return
            self._down = False
        log.info("rate limits are enforced again: Redis answers")
