"""The typed Python face of gate.lua: one EVALSHA round trip per admit, release, reset, inspect or listing.

Not Dramatiq's rate limiters: their concurrency counter has one TTL every caller refreshes (a kill -9'd worker's
slot never comes back while traffic flows; a lease per holder does), their bucket is a fixed window (twice the
limit across a boundary, no "until when"), and both decide by WATCH/MULTI: several round trips, retried under
contention, on a path every job takes twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from importlib import resources
from typing import Any, Literal, cast

import redis

#: Every key of the gate starts with this, so that operators can find (and tests can delete) them all.
DEFAULT_PREFIX = "wjp:flow:"

Circuit = Literal["closed", "open", "half_open"]


class Outcome(StrEnum):
    """What became of an admitted attempt; only the receiver's own answers move the breaker."""

    SUCCESS = "success"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    THROTTLED = "throttled"
    #: The job was not claimed or nothing was sent: the lease goes back and nothing else changes.
    NONE = "none"


class Reason(StrEnum):
    """Why an admission was deferred."""

    LIMIT = "limit"
    RATE = "rate"
    CIRCUIT = "circuit"
    THROTTLED = "throttled"


# Convoy samples failure rates from its database on a loop and Svix disables an endpoint after days of
# failures; here each outcome moves the breaker at once, in the same atomic step that gives the lease back.
@dataclass(frozen=True)
class BreakerPolicy:
    """Open after `threshold` consecutive transient failures for `cooldown` seconds, doubling on each reopening
    up to `max_cooldown`; a breaker that hears nothing for `forget_after` seconds (after its cooldown) forgets."""

    threshold: int = 10
    cooldown: float = 30.0
    max_cooldown: float = 3600.0
    forget_after: float = 86_400.0

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError("threshold must be at least 1")
        if not 0 < self.cooldown <= self.max_cooldown:
            raise ValueError("cooldown must be positive and at most max_cooldown")
        if self.forget_after <= 0:
            raise ValueError("forget_after must be positive")


@dataclass(frozen=True)
class Admission:
    """Granted (a lease is held until released or expired), or deferred for `reason` until `until`."""

    granted: bool
    reason: Reason | None = None
    #: When trying again can succeed; for `limit` the latest time a slot is sure to free (a release frees one sooner).
    until: datetime | None = None
    #: This attempt is the one probe of a half-open circuit: its outcome closes or reopens it.
    probe: bool = False


@dataclass(frozen=True)
class DestinationState:
    key: str
    in_flight: int
    #: An open circuit past `opened_until` still reads "open" until the next admission sends its probe.
    circuit: Circuit
    consecutive_failures: int
    opened_until: datetime | None
    paused_until: datetime | None


def _ms(moment: datetime | None) -> str:
    """Milliseconds since the epoch for the script, or '' to let the script read Redis's clock."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    return str(math.floor(moment.timestamp() * 1000))


def _moment(ms: Any) -> datetime | None:
    value = int(ms)
    return datetime.fromtimestamp(value / 1000, UTC) if value > 0 else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _seconds_to_ms(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


class Gate:
    """Admits attempts to destinations and records what became of them, for every worker of the fleet at once."""

    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        source = resources.files(__package__).joinpath("gate.lua").read_text(encoding="utf-8")
        # redis-py's Script sends EVALSHA and reloads the script once on NoScriptError (a restarted server).
        self._script = client.register_script(source)
        self.prefix = prefix
        # State and leases under separate infixes: no destination key, whatever it ends with, can name the
        # other's Redis key.
        self._known = f"{prefix}known"

    def _keys(self, key: str) -> list[str]:
        if not key:
            raise ValueError("a destination key is never empty")
        return [self._known, f"{self.prefix}state:{key}", f"{self.prefix}leases:{key}"]

    def admit(
        self,
        key: str,
        lease_id: str,
        *,
        lease_seconds: float,
        concurrency: int | None,
        rate: float | None,
        now: datetime | None = None,
    ) -> Admission:
        """Take a slot of `key` for `lease_seconds` (the visibility timeout) or say why not and until when.
        `concurrency` / `rate` None mean unlimited. Admitting a lease id already held renews it."""
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        if concurrency is not None and concurrency < 1:
            raise ValueError("concurrency must be at least 1 or None")
        if rate is not None and not rate > 0:
            raise ValueError("rate must be positive or None")
        granted, reason, until, probe = self._script(
            keys=self._keys(key),
            args=[
                "admit",
                _ms(now),
                key,
                lease_id,
                _seconds_to_ms(lease_seconds),
                "" if concurrency is None else concurrency,
                "" if rate is None else repr(float(rate)),
            ],
        )
        if granted:
            return Admission(granted=True, probe=bool(probe))
        return Admission(granted=False, reason=Reason(_text(reason)), until=_moment(until))

    def release(
        self,
        key: str,
        lease_id: str,
        outcome: Outcome,
        *,
        breaker: BreakerPolicy,
        retry_after: float | None = None,
        now: datetime | None = None,
    ) -> None:
        """Give the lease back and record the outcome; a `throttled` one with `retry_after` seconds pauses
        the destination that long."""
        self._script(
            keys=self._keys(key),
            args=[
                "release",
                _ms(now),
                key,
                lease_id,
                Outcome(outcome).value,
                _seconds_to_ms(retry_after or 0.0),
                breaker.threshold,
                _seconds_to_ms(breaker.cooldown),
                _seconds_to_ms(breaker.max_cooldown),
                _seconds_to_ms(breaker.forget_after),
            ],
        )

    def reset(self, key: str, *, now: datetime | None = None) -> None:
        """Close the circuit and lift any pause at once; leases in flight and the rate's tokens stay."""
        self._script(keys=self._keys(key), args=["reset", _ms(now), key])

    def inspect(self, keys: Sequence[str], *, now: datetime | None = None) -> list[DestinationState]:
        """The state of each destination, in the order asked (the defaults for one never seen)."""
        if not keys:
            return []
        redis_keys = [self._known]
        for key in keys:
            redis_keys.extend(self._keys(key)[1:])
        rows = self._script(keys=redis_keys, args=["inspect", _ms(now)])
        return [
            DestinationState(
                key=key,
                in_flight=int(in_flight),
                circuit=cast(Circuit, _text(circuit)),
                consecutive_failures=int(failures),
                opened_until=_moment(opened_until),
                paused_until=_moment(paused_until),
            )
            for key, (in_flight, circuit, failures, opened_until, paused_until) in zip(keys, rows, strict=True)
        ]

    def known(self, *, now: datetime | None = None) -> list[str]:
        """Destinations that hold any state (leases, a pause, a breaker that is not at rest, a drained rate)."""
        return sorted(_text(key) for key in self._script(keys=[self._known], args=["known", _ms(now)]))
