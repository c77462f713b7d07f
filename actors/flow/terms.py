"""The gate's terms: the limits and breaker policy it applies, what it is asked (admits, releases, where a queue
lives in Redis) and what it answers (admissions, a destination's state)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal

from actors.consumer import NAMESPACE, bell_key

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
    #: Deferred for 'limit', the message now waits on the destination's waiting list, no longer leased to this
    #: worker: its ack must not be sent (`Gate.batch`).
    parked: bool = False


@dataclass(frozen=True)
class DestinationState:
    key: str
    in_flight: int
    #: An open circuit past `opened_until` still reads "open" until the next admission sends its probe.
    circuit: Circuit
    consecutive_failures: int
    opened_until: datetime | None
    paused_until: datetime | None


@dataclass(frozen=True)
class QueueKeys:
    """Where Dramatiq keeps a queue in Redis (`actors/broker.py`): a woken message goes back on its list with a
    token on its bell; a parked one leaves the acks set of the worker process that fetched it. Waiting lists are
    per queue (`name`): a message can only be woken onto the queue that holds its body."""

    name: str
    queue: str
    bodies: str
    bell: str
    acks: str

    @classmethod
    def of(cls, queue_name: str, broker_id: str = "") -> QueueKeys:
        return cls(
            name=queue_name,
            queue=f"{NAMESPACE}:{queue_name}",
            bodies=f"{NAMESPACE}:{queue_name}.msgs",
            bell=bell_key(queue_name),
            acks=f"{NAMESPACE}:__acks__.{broker_id}.{queue_name}",
        )


@dataclass(frozen=True)
class Limits:
    """A destination's limits as the workers apply them; None: unlimited."""

    concurrency: int | None
    rate: float | None

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1 or None")
        if self.rate is not None and not self.rate > 0:
            raise ValueError("rate must be positive or None")


@dataclass(frozen=True)
class AdmitRequest:
    """An admission asked in a batch. `park`: the message's Redis id, to park on the destination's waiting list
    if the destination is at its limit. `share_full`: the worker's own share of the destination is full, so it
    is deferred for 'limit' without asking (and parked)."""

    key: str
    lease_id: str
    limits: Limits
    park: str = ""
    share_full: bool = False


@dataclass(frozen=True)
class ReleaseRequest:
    """A release sent in a batch (see `Gate.release`); `limits` bound how many waiting messages it wakes."""

    key: str
    lease_id: str
    outcome: Outcome
    limits: Limits
    retry_after: float | None = None
