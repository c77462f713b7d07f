"""Producer rate limits: a token bucket per API key in Redis (ratelimit.lua), shared by every API process.

A process that submits much for one key takes a few tokens ahead with each round trip, sized by its own demand
(what its requests asked of that key lately), and spends them without asking Redis; what it has not
spent goes back with its next round trip. One round trip at a time per key, started when half of what the last one
brought is spent; the requests that run out while it is under way wait for it. A key submitting little costs one
EVALSHA per request, as exactly as before; one submitting a lot costs about one per ALLOWANCE_SECONDS per process.

It fails open: intake answers while Redis is down (the ledger holds the jobs), so a limit Redis cannot check
admits the request; the outage is logged once, and its end once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
import weakref
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
#: What a round trip that Redis did not answer tells the requests that waited for it: admit (fail open).
_OPEN = 0.0
#: The shortest time a demand is measured over: two requests closer than this count as this far apart.
DEMAND_RESOLUTION = 0.001


@dataclass
class _Allowance:
    """One key's tokens taken ahead by one event loop (an API process's)."""

    tokens: int = 0
    #: Monotonic time after which the tokens are not spent but given back.
    until: float = -math.inf
    #: What this loop's requests asked of the key since `since` (its last round trip), whether they found tokens
    #: or waited for a round trip: its demand.
    wanted: int = 0
    since: float = -math.inf
    #: Below this many tokens the next are asked for ahead of time: half of what the last round trip brought.
    low: int = 0
    #: This loop's round trip for the key under way (see `RateLimiter._ask`); None while there is none.
    asking: asyncio.Task[float | None] | None = None

    def spend(self, cost: int, now: float) -> bool:
        """Whether the tokens held cover `cost` now; if so they are spent."""
        if self.tokens < cost or now >= self.until:
            return False
        self.tokens -= cost
        return True


class RateLimiter:
    """Admits a producer's requests at `rate` per second, bursts up to one second's worth, for every API process
    sharing the Redis at once. Its round trips go through redis.asyncio, on the caller's event loop (any number of
    loops, on any threads); each loop takes ahead for itself, as a process does."""

    def __init__(
        self, redis_: AsyncRedis, prefix: str = DEFAULT_PREFIX, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._source = resources.files(__package__).joinpath("ratelimit.lua").read_text(encoding="utf-8")
        self._sha = hashlib.sha1(self._source.encode()).hexdigest()
        self.redis = redis_
        self.prefix = prefix
        self._monotonic = monotonic
        # By loop: a loop's allowances are touched only from its own thread, so they need no lock.
        self._allowances: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Allowance]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._down = False

    async def wait(self, scope: str, rate: float, cost: int = 1) -> float:
        """0.0 when `scope` may spend `cost` now (and it is spent), else the seconds until it may. `cost` is the
        number of notifications of the request: one for a single POST, each item of a batch."""
        if not rate > 0 or cost < 1:
            raise ValueError("rate must be positive and cost at least 1")
        allowance = self._allowance(scope)
        allowance.wanted += cost
        while not allowance.spend(cost, self._monotonic()):
            if allowance.asking is None:
                answer = await asyncio.shield(self._start_asking(scope, allowance, rate, cost))
                return answer or 0.0  # None: admitted; _OPEN: Redis did not answer
            # One round trip at a time per key and loop: the requests that run out while it is under way take from
            # what it brings back (sized for this loop's demand) instead of asking Redis each.
            answer = await asyncio.shield(allowance.asking)
            if answer == _OPEN:
                return 0.0  # Redis did not answer it: fail open without waiting for it once more
            if answer is not None:  # refused: this request is asked on its own
                return await self._ask(scope, allowance, rate, cost) or 0.0
        if allowance.asking is None and allowance.tokens < allowance.low:
            # Running low: the next tokens are asked for while these are spent, so requests do not wait for them.
            self._start_asking(scope, allowance, rate, 0)
        return 0.0

    def _start_asking(self, scope: str, allowance: _Allowance, rate: float, cost: int) -> asyncio.Task[float | None]:
        """`_ask` as the loop's round trip for `scope` that others wait for (a task: it ends even when the request
        that started it goes away)."""
        task = asyncio.get_running_loop().create_task(self._ask(scope, allowance, rate, cost))
        allowance.asking = task
        return task

    async def _ask(self, scope: str, allowance: _Allowance, rate: float, cost: int) -> float | None:
        """One round trip: spends `cost` (0: only takes ahead), gives back the tokens held past their time, takes
        ahead for the loop's demand. None when admitted, _OPEN when Redis did not answer, else the seconds until
        `cost` may be spent."""
        now = self._monotonic()
        unspent = 0
        if now >= allowance.until:
            unspent, allowance.tokens = allowance.tokens, 0
        demand = allowance.wanted / max(now - allowance.since, DEMAND_RESOLUTION)
        allowance.wanted, allowance.since = 0, now
        ahead = math.floor(min(demand, rate) * ALLOWANCE_SECONDS)
        try:
            wait_ms, granted = await self._bucket(self.prefix + scope, repr(float(rate)), cost, ahead, unspent)
        except (redis.RedisError, OSError) as exc:
            self._note_outage(exc)
            return _OPEN
        finally:
            if allowance.asking is asyncio.current_task():
                allowance.asking = None
        if self._down:
            self._note_recovery()
        if wait_ms != 0:
            return int(wait_ms) / 1000
        allowance.tokens += int(granted)
        allowance.low = int(granted) // 2
        # From when they arrived: a round trip slower than the allowance (a starved process) still brings tokens.
        allowance.until = self._monotonic() + ALLOWANCE_SECONDS
        return None

    def _allowance(self, scope: str) -> _Allowance:
        loop = asyncio.get_running_loop()
        allowances = self._allowances.get(loop)
        if allowances is None:
            with self._lock:  # loops on other threads may add theirs at the same time
                allowances = self._allowances.setdefault(loop, {})
        allowance = allowances.get(scope)
        if allowance is None:
            allowance = allowances[scope] = _Allowance(since=self._monotonic())
        return allowance

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
