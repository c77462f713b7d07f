"""Producer rate limits: a token bucket per API key in Redis (ratelimit.lua), one EVALSHA per request.

It fails open: intake answers while Redis is down (the ledger holds the jobs), so a limit Redis cannot check
admits the request; the outage is logged once, and its end once.
"""

from __future__ import annotations

import logging
import threading
from importlib import resources

import redis

log = logging.getLogger("wjp.api")

#: Every bucket's key starts with this, followed by the API key's scope (its id).
DEFAULT_PREFIX = "wjp:ratelimit:"


class RateLimiter:
    """Admits a producer's requests at `rate` per second, bursts up to one second's worth, for every API process
    sharing the Redis at once."""

    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        source = resources.files(__package__).joinpath("ratelimit.lua").read_text(encoding="utf-8")
        # redis-py's Script sends EVALSHA and reloads the script once on NoScriptError (a restarted server).
        self._script = client.register_script(source)
        self.prefix = prefix
        self._lock = threading.Lock()
        self._down = False

    def wait(self, scope: str, rate: float, cost: int = 1) -> float:
        """0.0 when `scope` may spend `cost` now (and it is spent), else the seconds until it may. `cost` is the
        number of notifications of the request: one here, each item of a batch (the batch endpoint to come)."""
        if not rate > 0 or cost < 1:
            raise ValueError("rate must be positive and cost at least 1")
        try:
            wait_ms = int(self._script(keys=[self.prefix + scope], args=[repr(float(rate)), cost]))
        except redis.RedisError as exc:
            self._note_outage(exc)
            return 0.0
        if self._down:
            self._note_recovery()
        return wait_ms / 1000

    def _note_outage(self, exc: redis.RedisError) -> None:
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
