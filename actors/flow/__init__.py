"""Fleet-wide flow control of destinations: concurrency leases, rate, throttling pauses and circuit breakers."""

from actors.flow.gate import Gate
from actors.flow.terms import (
    Admission,
    AdmitRequest,
    BreakerPolicy,
    DestinationState,
    Limits,
    Outcome,
    QueueKeys,
    Reason,
    ReleaseRequest,
)

__all__ = [
    "Admission",
    "AdmitRequest",
    "BreakerPolicy",
    "DestinationState",
    "Gate",
    "Limits",
    "Outcome",
    "QueueKeys",
    "Reason",
    "ReleaseRequest",
]
