"""Prometheus metrics of the workers and the reconciler: attempts, delivery latency, reconciler actions.

prometheus_client picks its storage when first imported: with PROMETHEUS_MULTIPROC_DIR set, each process
writes its values to files there and any process can merge them; without it, they live in this process.
`wjp worker` and `wjp serve` set the directory before their processes start (see `service/multiproc.py`).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from actors.channels.base import DeliveryError, PermanentError, TransientError
from ledger.states import Outcome

#: Upper bounds of the latency buckets, in seconds: from a log line (~1 ms) to a webhook at its timeout.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

ATTEMPTS = Counter(
    "wjp_attempts",
    "Delivery attempts by channel and outcome (success, transient_error, permanent_error, throttled).",
    ["channel", "outcome"],
)  # fmt: skip
DELIVERY_SECONDS = Histogram(
    "wjp_delivery_duration_seconds", "Time a channel took to deliver one attempt, by channel.", ["channel"],
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
DEFERRALS = Counter(
    "wjp_deferrals", "Messages deferred on their destination, by reason (limit, rate, circuit, throttled).", ["reason"]
)
RECONCILER_ACTIONS = Counter(
    "wjp_reconciler_actions",
    "Jobs the reconciler acted on: expired (claim taken back, retried), failed (no attempts left), redispatched.",
    ["action"],
)


def observe_attempt(channel: str, error: DeliveryError | None, seconds: float) -> None:
    """Count one finished attempt and how long its channel took."""
    if error is None:
        outcome = Outcome.SUCCESS
    elif isinstance(error, PermanentError):
        outcome = Outcome.PERMANENT_ERROR
    elif isinstance(error, TransientError) and error.throttled:
        outcome = Outcome.THROTTLED
    else:
        outcome = Outcome.TRANSIENT_ERROR
    ATTEMPTS.labels(channel, outcome.value).inc()
    DELIVERY_SECONDS.labels(channel).observe(seconds)


def observe_deferral(reason: str) -> None:
    """Count one message deferred on its destination (no attempt spent)."""
    DEFERRALS.labels(reason).inc()


def observe_pass(*, expired: int, failed: int, redispatched: int) -> None:
    """Count what one reconciler pass did. Zeros are added too: after the first pass every action has a series,
    so rate() and alerts see a zero rather than nothing. (Not at import: every `wjp` command imports this
    module, and in multiprocess mode a first value means a file in the shared directory.)"""
    for action, count in (("expired", expired), ("failed", failed), ("redispatched", redispatched)):
        RECONCILER_ACTIONS.labels(action).inc(count)
