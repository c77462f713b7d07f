"""Dashboard sign-ins kept in Redis: sessions that expire on the server, and failed sign-ins counted per address.

Redis rather than the ledger: a session is transient state every API process must see at once, and losing them
all (a flushed Redis) only means signing in again.
"""

from __future__ import annotations

import hashlib

import redis


class SessionsUnavailable(Exception):
    """Redis could not be reached, so no session can be started, checked or counted."""


def _digest(text: str) -> str:
    """A session value or an address as it names a Redis key: whoever reads Redis cannot use a session it sees."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class DashboardSessions:
    """Sessions (value → an opaque record the caller checks) and failed sign-ins, under `prefix` in Redis."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def _session_key(self, session: str) -> str:
        return f"{self.prefix}session:{_digest(session)}"

    def _failures_key(self, address: str) -> str:
        return f"{self.prefix}failed-sign-ins:{_digest(address)}"

    def start(self, session: str, record: str, *, lifetime_seconds: int) -> None:
        """Keep `session` (a fresh random value) holding `record`, gone from Redis after `lifetime_seconds`."""
        try:
            self.client.set(self._session_key(session), record, ex=lifetime_seconds)
        except redis.RedisError as exc:
            raise SessionsUnavailable(str(exc)) from exc

    def record(self, session: str) -> str | None:
        """The record of a live session, or None when it never existed, expired or ended."""
        try:
            value = self.client.get(self._session_key(session))
        except redis.RedisError as exc:
            raise SessionsUnavailable(str(exc)) from exc
        return value.decode() if isinstance(value, bytes) else value

    def end(self, session: str) -> None:
        try:
            self.client.delete(self._session_key(session))
        except redis.RedisError as exc:
            raise SessionsUnavailable(str(exc)) from exc

    def failures(self, address: str) -> tuple[int, int]:
        """Failed sign-ins from `address` in its current window, and the whole seconds left of that window."""
        key = self._failures_key(address)
        try:
            count, ttl = self.client.pipeline(transaction=False).get(key).ttl(key).execute()
        except redis.RedisError as exc:
            raise SessionsUnavailable(str(exc)) from exc
        return int(count or 0), max(0, int(ttl))

    def fail(self, address: str, *, window_seconds: int) -> int:
        """Count a failed sign-in from `address`; the window starts at its first failure and lasts
        `window_seconds`. The count so far in this window."""
        key = self._failures_key(address)
        try:
            _, count = self.client.pipeline().set(key, 0, ex=window_seconds, nx=True).incr(key).execute()
        except redis.RedisError as exc:
            raise SessionsUnavailable(str(exc)) from exc
        return int(count)
