"""What operators see of destinations: limits (the ledger's overrides over the defaults), the gate's state in
Redis and the jobs waiting in the ledger, put together; and the operators' changes to them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import redis

from actors.broker import BrokerUnavailable, Dispatcher
from actors.flow.gate import Gate
from actors.flow.terms import Circuit, DestinationState
from actors.settings import FlowSettings
from ledger import destinations, transitions
from ledger.database import Database
from ledger.destinations import KEEP, Limits
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch

T = TypeVar("T")


@dataclass(frozen=True)
class DestinationView:
    """One destination as `GET /internal/destinations/{key}` shows it."""

    key: str
    #: The override, else the default (`WJP_DESTINATION_CONCURRENCY`).
    concurrency: int
    #: The override, else the default (`WJP_DESTINATION_RATE`); None: unlimited.
    rate: float | None
    in_flight: int
    circuit: Circuit
    consecutive_failures: int
    opened_until: datetime | None
    paused_until: datetime | None
    #: Jobs PENDING or RETRY on this destination (due or not).
    waiting: int
    #: The limits an operator set (None: that limit is the default).
    override: Limits

    def noteworthy(self, now: datetime) -> bool:
        """Listed by `GET /internal/destinations`: limits set, a circuit not closed, a pause, work in flight or
        waiting. Every other destination is at its defaults with nothing to say."""
        paused = self.paused_until is not None and self.paused_until > now
        return self.override != Limits() or self.circuit != "closed" or paused or self.in_flight > 0 or self.waiting > 0


class Destinations:
    """Reads and changes destinations for the API, the dashboard, the metrics and `wjp destinations`."""

    def __init__(self, database: Database, gate: Gate, flow: FlowSettings, dispatcher: Dispatcher) -> None:
        self.database = database
        self.gate = gate
        self.flow = flow
        self.dispatcher = dispatcher

    def listing(self, *, now: datetime | None = None) -> list[DestinationView]:
        """Every noteworthy destination, by key. Raises `BrokerUnavailable` when Redis does not answer."""
        now = now or utcnow()

        def read(conn: Any) -> tuple[dict[str, Limits], dict[str, int]]:
            return destinations.overrides(conn), destinations.waiting(conn)

        limits, waiting = self.database.run(read)
        known = self._redis(lambda: self.gate.known(now=now))
        keys = sorted(set(limits) | set(waiting) | set(known))
        states = self._redis(lambda: self.gate.inspect(keys, now=now))
        views = [self._view(state, limits.get(state.key), waiting.get(state.key, 0)) for state in states]
        return [view for view in views if view.noteworthy(now)]

    def one(self, key: str, *, now: datetime | None = None) -> DestinationView:
        """`key`'s view, the defaults when nothing is known of it. Raises `BrokerUnavailable`."""

        def read(conn: Any) -> tuple[Limits, int]:
            return destinations.overrides_of(conn, key), destinations.waiting(conn, [key]).get(key, 0)

        limits, waiting = self.database.run(read)
        (state,) = self._redis(lambda: self.gate.inspect([key], now=now))
        return self._view(state, limits, waiting)

    def change(self, key: str, *, concurrency: Any = KEEP, rate: Any = KEEP) -> Limits:
        """Set the limits given (None: back to the default), keep the others; the workers see it within seconds."""
        now = utcnow()
        return self.database.run(
            lambda conn: destinations.change_limits(conn, key, concurrency=concurrency, rate=rate, now=now),
            transaction=True,
        )

    def clear(self, key: str) -> bool:
        """Take `key` back to the default limits; whether it had an override."""
        return self.database.run(lambda conn: destinations.clear_limits(conn, key), transaction=True)

    def reset(self, key: str) -> int:
        """Close `key`'s circuit and lift its pause at once, and send the jobs that were deferred for either now
        rather than at the end of the cooldown or pause they were deferred to; how many. Raises
        `BrokerUnavailable`."""
        self._redis(lambda: self.gate.reset(key))
        now = utcnow()

        def release(conn: Any) -> list[Dispatch]:
            dispatches = transitions.release_deferred(conn, key, ["circuit", "throttled"], now=now)
            # Sent before the commit, as a reconciler pass sends: a pass reading the rows meanwhile waits for them.
            self.dispatcher.send(dispatches, now=now)
            return dispatches

        return len(self.database.run(release, transaction=True))

    def open_circuits(self) -> int:
        """Destinations whose circuit is open or half-open. Raises `BrokerUnavailable`."""
        states = self._redis(lambda: self.gate.inspect(self.gate.known()))
        return sum(1 for state in states if state.circuit != "closed")

    def _view(self, state: DestinationState, limits: Limits | None, waiting: int) -> DestinationView:
        limits = limits or Limits()
        return DestinationView(
            key=state.key,
            concurrency=limits.concurrency if limits.concurrency is not None else self.flow.concurrency,
            rate=limits.rate if limits.rate is not None else self.flow.rate,
            in_flight=state.in_flight,
            circuit=state.circuit,
            consecutive_failures=state.consecutive_failures,
            opened_until=state.opened_until,
            paused_until=state.paused_until,
            waiting=waiting,
            override=limits,
        )

    @staticmethod
    def _redis(call: Callable[[], T]) -> T:
        try:
            return call()
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"Redis unreachable: {exc}") from exc
