"""Fleet-wide flow control of destinations: concurrency leases, rate, throttling pauses and circuit breakers."""

from actors.flow.gate import (
    Admission,
    BreakerPolicy,
    DestinationState,
    Gate,
    Outcome,
    Reason,
)

__all__ = ["Admission", "BreakerPolicy", "DestinationState", "Gate", "Outcome", "Reason"]
