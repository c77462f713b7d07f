"""Who may call what: the admin token guards /internal/* and /metrics; producer API keys guard /api/*.

Both guards decide on the route that matched, never on the raw path: Falcon routes `//internal/queue/stats`
to `/internal/queue/stats`, and a prefix test on the raw path would let that spelling through.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import falcon

from actors.ratelimit import RateLimiter
from actors.sessions import DashboardSessions, SessionsUnavailable
from ledger import api_keys
from ledger.database import Database
from ledger.errors import LedgerUnavailable
from service.errors import RETRY_AFTER, ApiError
from service.offload import Offload

T = TypeVar("T")

#: Routes that need the admin token when one is configured.
ADMIN_PREFIXES = ("/internal/", "/metrics")
#: Routes that need a producer key once one exists.
PRODUCER_PREFIX = "/api/"
DASHBOARD = "/internal/dashboard"
#: The dashboard's sign-in page: open, since it is where the token is given.
LOGIN = "/internal/dashboard/login"
#: Sign-out: open too, so that a session that has already expired can still clear its cookie.
LOGOUT = "/internal/dashboard/logout"
#: Carries a browser's dashboard session (a browser cannot add an Authorization header to a page load).
SESSION_COOKIE = "wjp_dashboard"
#: Seconds a process trusts what it read about producer keys: saves a query per request, and bounds how long
#: a revoked key keeps working (or a first key goes unenforced, or an old rate holds) in a process that has just
#: seen it.
KEY_CACHE_SECONDS = 2.0
#: The producer of every request while no key exists: no scope, and no limit (there is no key to limit).
NO_KEY = api_keys.Producer(scope="", rate=None)


def bearer_token(req: falcon.Request) -> str | None:
    header = req.get_header("Authorization") or ""
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def session_record(session: str, admin_token: str) -> str:
    """What a dashboard session keeps on the server: a digest of the admin token it was started with, so that
    changing the token ends every session. Keyed by the session value, which Redis never holds: Redis's contents
    alone give nothing to test guesses of the token against."""
    return hmac.new(session.encode(), admin_token.encode(), hashlib.sha256).hexdigest()


def request_scope(req: falcon.Request) -> str:
    """The producer's scope, set by `ApiKeyMiddleware`; raises the ledger outage that kept it from being known."""
    error = getattr(req.context, "scope_error", None)
    if error is not None:
        raise error
    return getattr(req.context, "scope", "")


def _unauthorized(message: str, realm: str) -> ApiError:
    return ApiError(falcon.HTTP_401, "unauthorized", message, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'})


class AdminTokenMiddleware:
    """Rejects operator routes without `Authorization: Bearer <WJP_ADMIN_TOKEN>` (or, on the dashboard, its
    session cookie); a browser opening the dashboard without either is sent to the sign-in page. Sessions are read
    from Redis on `offload`'s threads."""

    def __init__(self, token: str, sessions: DashboardSessions, offload: Offload) -> None:
        self.token = token
        self.sessions = sessions
        self.offload = offload

    async def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict
    ) -> None:
        template = req.uri_template or ""
        if not template.startswith(ADMIN_PREFIXES) or template in (LOGIN, LOGOUT):
            return
        given = bearer_token(req)
        # Constant-time comparisons: the answer's timing must not reveal how much of a guess was right.
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            return
        if given is None and template.startswith(DASHBOARD):
            cookie = req.cookies.get(SESSION_COOKIE)
            if cookie is not None and await self.offload(self._live, cookie):
                return
            if req.method == "GET" and req.get_header("Authorization") is None:
                raise falcon.HTTPSeeOther(LOGIN)
        raise _unauthorized("This endpoint needs 'Authorization: Bearer <admin token>'.", "wjp-admin")

    def _live(self, session: str) -> bool:
        """Whether `session` was started with the current token and has neither expired nor ended."""
        try:
            record = self.sessions.record(session)
        except SessionsUnavailable:
            raise sessions_unavailable() from None
        return record is not None and hmac.compare_digest(record.encode(), session_record(session, self.token).encode())


def sessions_unavailable() -> ApiError:
    return ApiError(
        falcon.HTTP_503,
        "sessions_unavailable",
        "Dashboard sessions are kept in Redis, which cannot be reached; the admin token still works as a bearer token.",
        headers={"Retry-After": str(RETRY_AFTER)},
    )


class ApiKeyMiddleware:
    """Once any producer key exists, /api/* needs `Authorization: Bearer <key>`; sets `req.context.scope` to
    the key's id ('' while no key exists), which scopes idempotency keys and the jobs a producer can see. A key's
    submissions are held to its rate (or `default_rate`) by `limiter`, shared by every API process. What it reads
    is cached a moment, in the loop; the ledger is asked on `offload`'s threads, Redis (the rate) from the loop."""

    def __init__(
        self,
        database: Database,
        offload: Offload,
        *,
        limiter: RateLimiter | None = None,
        default_rate: float | None = None,
        cache_seconds: float = KEY_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database = database
        self.offload = offload
        self.limiter = limiter
        self.default_rate = default_rate
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._keys_exist = (False, -math.inf)  # (answer, until)
        # Digest of a key → (its scope and rate, until). Only keys that worked are kept, so it holds at most one
        # entry per producer key; never the keys themselves.
        self._producers: dict[str, tuple[api_keys.Producer, float]] = {}
        # What is being read from the ledger now, by loop and what it answers ("" whether any key exists, else a
        # key's digest): the requests that find the same answer lapsed meanwhile wait for that read, not one each.
        # By loop, as a future waits only on its own (one per process when served; tests run several).
        self._reads: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future] = {}

    async def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict
    ) -> None:
        if not (req.uri_template or "").startswith(PRODUCER_PREFIX):
            return
        keys_exist, until = self._keys_exist
        if not keys_exist and self.clock() < until:
            # No key exists, as read a moment ago: no scope and nothing to limit (`_hold_to_rate` would return at
            # once), so none of the awaits below, which cost the loop CPU on every POST.
            req.context.scope = NO_KEY.scope
            return
        try:
            producer = await self._producer(bearer_token(req))
        except LedgerUnavailable as exc:
            # No scope, so the request cannot reach the ledger; it fails with this 503 when it tries, after
            # the checks that need no ledger (a bad request is still told what is wrong with it).
            req.context.scope_error = exc
            return
        if producer is None:
            raise _unauthorized("This endpoint needs 'Authorization: Bearer <API key>'.", "wjp")
        req.context.scope = producer.scope
        if req.method != "POST":
            return
        if getattr(resource, "counts_its_items", False):
            # Only the resource knows how many notifications its body holds; it spends them through this.
            req.context.hold_to_rate = lambda cost: self._hold_to_rate(producer, cost)
        else:
            await self._hold_to_rate(producer, 1)

    async def _hold_to_rate(self, producer: api_keys.Producer, cost: int) -> None:
        """Spend `cost` notifications of the key's rate or answer 429. No key, no limit: there is nothing to
        limit."""
        rate = producer.rate if producer.rate is not None else self.default_rate
        if self.limiter is None or rate is None or not producer.scope:
            return
        wait = await self.limiter.wait(producer.scope, rate, cost)
        if wait > 0:
            raise ApiError(
                falcon.HTTP_429,
                "rate_limited",
                f"This API key may submit {rate:g} notifications per second; try again later.",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )

    async def _producer(self, given: str | None) -> api_keys.Producer | None:
        """No scope ('') while no key exists; else the given key's, or None when it is missing or unknown."""
        if not await self._any_keys():
            return NO_KEY
        return await self._producer_of(given) if given is not None else None

    async def _any_keys(self) -> bool:
        answer, until = self._keys_exist
        if self.clock() < until:
            return answer
        return await self._read_once("", self._read_any_keys)

    async def _read_any_keys(self) -> bool:
        now = self.clock()
        answer = await self.offload(self.database.run, api_keys.any_exist)
        self._keys_exist = (answer, now + self.cache_seconds)
        return answer

    async def _producer_of(self, key: str) -> api_keys.Producer | None:
        digest = api_keys.digest(key)
        cached = self._producers.get(digest)
        if cached is not None and self.clock() < cached[1]:
            return cached[0]
        return await self._read_once(digest, lambda: self._read_producer(digest, key))

    async def _read_producer(self, digest: str, key: str) -> api_keys.Producer | None:
        now = self.clock()
        producer = await self.offload(self.database.run, lambda conn: api_keys.producer_of(conn, key))
        if producer is None:
            self._producers.pop(digest, None)
        else:
            self._producers[digest] = (producer, now + self.cache_seconds)
        return producer

    async def _read_once(self, what: str, read: Callable[[], Awaitable[T]]) -> T:
        """`read()`, or the one already in flight for `what`. Shielded: a caller that goes away does not cancel
        the read the others wait for."""
        reading = (asyncio.get_running_loop(), what)
        flight = self._reads.get(reading)
        if flight is None:
            flight = self._reads[reading] = asyncio.ensure_future(read())
            flight.add_done_callback(lambda done: self._read_done(reading, done))
        return await asyncio.shield(flight)

    def _read_done(self, reading: tuple[asyncio.AbstractEventLoop, str], done: asyncio.Future) -> None:
        del self._reads[reading]
        if not done.cancelled():
            done.exception()  # every waiter has it; marks it seen should no waiter be left
