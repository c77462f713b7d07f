"""The steps of the gate's table tests: each one public operation on a destination at a time after T0."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from actors.flow import Admission, BreakerPolicy, Gate, Outcome, Reason

T0 = datetime(2030, 1, 1, tzinfo=UTC)
KEY = "webhook:example.com:443"
BREAKER = BreakerPolicy(threshold=3, cooldown=10, max_cooldown=25, forget_after=100)
LEASE = 30.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass(frozen=True)
class Admit:
    lease: str
    at: float = 0.0
    concurrency: int | None = 20
    rate: float | None = None

    def run(self, gate: Gate, key: str = KEY) -> Admission:
        return gate.admit(key, self.lease, lease_seconds=LEASE, concurrency=self.concurrency, rate=self.rate,
                          now=at(self.at))


@dataclass(frozen=True)
class Release:
    lease: str
    outcome: Outcome
    at: float = 0.0
    retry_after: float | None = None

    def run(self, gate: Gate, key: str = KEY) -> None:
        gate.release(key, self.lease, self.outcome, breaker=BREAKER, retry_after=self.retry_after, now=at(self.at))


@dataclass(frozen=True)
class Reset:
    at: float = 0.0

    def run(self, gate: Gate, key: str = KEY) -> None:
        gate.reset(key, now=at(self.at))


Step = Admit | Release | Reset


def attempts(outcome: Outcome, count: int, start: float = 0.0, tag: str = "f") -> list[Step]:
    """`count` attempts one second apart, each admitted and then released with `outcome`."""
    steps: list[Step] = []
    for n in range(count):
        steps += [Admit(f"{tag}{n}", at=start + n), Release(f"{tag}{n}", outcome, at=start + n + 0.5)]
    return steps


OPENED = attempts(Outcome.TRANSIENT, 3)  # the 3rd failure at 2.5 s opens the circuit until 12.5 s
PROBING = [*OPENED, Admit("probe", at=13)]  # half-open, the probe's lease runs until 43 s


def granted(probe: bool = False) -> Admission:
    return Admission(granted=True, probe=probe)


def deferred(reason: str, until: float) -> Admission:
    return Admission(granted=False, reason=Reason(reason), until=at(until))
