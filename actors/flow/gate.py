"""The typed Python face of gate.lua: one EVALSHA round trip per admit, release, reset, inspect or listing.

Not Dramatiq's rate limiters: their concurrency counter has one TTL every caller refreshes (a kill -9'd worker's
slot never comes back while traffic flows; a lease per holder does), their bucket is a fixed window (twice the
limit across a boundary, no "until when"), and both decide by WATCH/MULTI: several round trips, retried under
contention, on a path every job takes twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any, cast

import redis

from actors import resp
from actors.consumer import BELL_TOKENS
from actors.flow.terms import (
    Admission,
    AdmitRequest,
    BreakerPolicy,
    Circuit,
    DestinationState,
    Limits,
    Outcome,
    QueueKeys,
    Reason,
    ReleaseRequest,
)

#: Most packed argument runs a gate keeps (`Gate._destination`): far more than the destinations a worker meets at once.
MAX_PACKED = 1024
#: Every key of the gate starts with this, so that operators can find (and tests can delete) them all.
DEFAULT_PREFIX = "wjp:flow:"


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
        self._client = client
        self._evalsha = resp.Packed(["EVALSHA", self._script.sha])
        #: The packed arguments of `batch` that repeat from call to call: per queue and policy, per destination.
        self._packed: dict[object, tuple[resp.Packed, resp.Packed]] = {}
        self.prefix = prefix
        # State and leases under separate infixes: no destination key, whatever it ends with, can name the
        # other's Redis key.
        self._known = f"{prefix}known"

    def _waiting_set(self, queue: QueueKeys) -> str:
        # Queue names hold no ':', so no destination key can make a list's name equal a set's.
        return f"{self.prefix}waiting:{queue.name}"

    def waiting_list(self, queue: QueueKeys, key: str) -> str:
        """The Redis key of the list where messages of `queue` wait for room at destination `key`."""
        return f"{self.prefix}waiting:{queue.name}:{key}"

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

    def batch(
        self,
        admits: Sequence[AdmitRequest],
        releases: Sequence[ReleaseRequest],
        *,
        queue: QueueKeys,
        lease_seconds: float,
        breaker: BreakerPolicy,
        now: datetime | None = None,
    ) -> list[Admission]:
        """The releases, then the admits (in order), of any destinations, in one round trip; a release wakes
        waiting messages of its destination as far as its limit has room. An admit deferred for 'limit' with a
        `park` id moves that message from `queue.acks` to the destination's waiting list (`Admission.parked`)."""
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        index: dict[str, int] = {}
        destination_keys: list[resp.Packed] = []
        destination_args: list[resp.Packed] = []
        for request in (*releases, *admits):
            if request.key not in index:
                index[request.key] = len(index) + 1
                packed_keys, packed_args = self._destination(queue, request.key, request.limits)
                destination_keys.append(packed_keys)
                destination_args.append(packed_args)
        args: list[resp.Arg] = [len(releases)]
        for release in releases:
            args += [index[release.key], release.lease_id, Outcome(release.outcome).value,
                     _seconds_to_ms(release.retry_after or 0.0)]  # fmt: skip
        args.append(len(admits))
        for admit in admits:
            args += [index[admit.key], admit.lease_id, admit.park, "1" if admit.share_full else ""]
        keys, settings = self._batch_constants(queue, lease_seconds, breaker)
        call = resp.command(
            self._evalsha, 6 + 3 * len(index), keys, *destination_keys, "batch", _ms(now), settings, len(index),
            *destination_args, *args,
        )  # fmt: skip
        rows = self._call(call)
        return [
            Admission(granted=True, probe=bool(probe))
            if granted
            else Admission(granted=False, reason=Reason(_text(reason)), until=_moment(until), parked=bool(parked))
            for granted, reason, until, probe, parked in rows
        ]

    def _batch_constants(
        self, queue: QueueKeys, lease_seconds: float, breaker: BreakerPolicy
    ) -> tuple[resp.Packed, resp.Packed]:
        """The keys of `queue`, and the breaker's and lease's settings, as `batch` sends them."""
        found = self._packed.get((queue, lease_seconds, breaker))
        if found is None:
            keys = [self._known, self._waiting_set(queue), queue.queue, queue.bodies, queue.bell, queue.acks]
            settings = [
                breaker.threshold, _seconds_to_ms(breaker.cooldown), _seconds_to_ms(breaker.max_cooldown),
                _seconds_to_ms(breaker.forget_after), _seconds_to_ms(lease_seconds), BELL_TOKENS,
            ]  # fmt: skip
            found = self._remember((queue, lease_seconds, breaker), resp.Packed(keys), resp.Packed(settings))
        return found

    def _destination(self, queue: QueueKeys, key: str, limits: Limits) -> tuple[resp.Packed, resp.Packed]:
        """The keys and the arguments of destination `key` in a `batch` of `queue`."""
        found = self._packed.get((queue, key, limits))
        if found is None:
            keys = [*self._keys(key)[1:], self.waiting_list(queue, key)]
            args = [
                key, "" if limits.concurrency is None else limits.concurrency,
                "" if limits.rate is None else repr(float(limits.rate)),
            ]  # fmt: skip
            found = self._remember((queue, key, limits), resp.Packed(keys), resp.Packed(args))
        return found

    def _remember(self, what: object, keys: resp.Packed, args: resp.Packed) -> tuple[resp.Packed, resp.Packed]:
        if len(self._packed) >= MAX_PACKED:  # destinations come and go: start again rather than grow
            self._packed.clear()
        self._packed[what] = (keys, args)
        return keys, args

    def _call(self, call: bytes) -> Any:
        """Run a packed EVALSHA of the script; a Redis that lost its scripts (a restart) is sent it again, as
        redis-py's `Script` does."""
        try:
            return resp.exchange(self._client, [call])[0]
        except redis.exceptions.NoScriptError:
            self._client.script_load(self._script.script)
            return resp.exchange(self._client, [call])[0]

    def waiting(self, queue: QueueKeys) -> list[str]:
        """Destinations that have messages of `queue` on their waiting lists."""
        keys = [self._known, self._waiting_set(queue)]
        return sorted(_text(key) for key in self._script(keys=keys, args=["waiting", ""]))

    def wake(
        self, limits: dict[str, Limits], *, queue: QueueKeys, cap: int = 100, now: datetime | None = None
    ) -> dict[str, int]:
        """Wake the waiting messages of each destination of `limits` onto `queue` as far as its limit has room (up to
        `cap` for one without a limit): leases of killed workers expire with no release to wake anyone. How many
        woke, per destination."""
        if not limits:
            return {}
        keys = [self._known, self._waiting_set(queue), queue.queue, queue.bodies, queue.bell]
        args: list[object] = ["wake", _ms(now), BELL_TOKENS, cap]
        for key, limit in limits.items():
            keys += [self._keys(key)[2], self.waiting_list(queue, key)]
            args += [key, "" if limit.concurrency is None else limit.concurrency]
        return dict(zip(limits, (int(n) for n in self._script(keys=keys, args=args)), strict=True))
