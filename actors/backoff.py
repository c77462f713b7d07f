"""When to try again: the backoff schedule and the retry decision, as pure functions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

#: Beyond this many doublings every delay is capped anyway; stops 2**n from overflowing a float.
MAX_DOUBLINGS = 64


@dataclass(frozen=True)
class BackoffPolicy:
    """`initial` seconds before the 2nd attempt, doubling up to `maximum`, plus up to `jitter` seconds."""

    initial: float = 2.0
    maximum: float = 3600.0
    jitter: float = 1.0


def retry_delay(
    policy: BackoffPolicy, failed_attempts: int, *, rand: Callable[[], float], retry_after: float | None = None
) -> float:
    """Seconds to wait after the `failed_attempts`-th failure: min(max, initial × 2^(n−1)) + U(0, jitter),
    never less than the provider's Retry-After. `rand` returns a float in [0, 1)."""
    doublings = min(max(failed_attempts - 1, 0), MAX_DOUBLINGS)
    delay = min(policy.maximum, policy.initial * 2.0**doublings) + rand() * policy.jitter
    return max(delay, retry_after or 0.0)


class Verdict(StrEnum):
    SUCCEED = "succeed"
    RETRY = "retry"
    FAIL = "fail"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    #: When the next attempt is due (RETRY only).
    due_at: datetime | None = None
    delay: float = 0.0


def decide(
    *,
    attempt: int,
    max_attempts: int,
    failed: bool,
    permanent: bool,
    retry_after: float | None,
    policy: BackoffPolicy,
    now: datetime,
    rand: Callable[[], float],
) -> Decision:
    """What follows attempt number `attempt`: success, another try later, or FAILED for good."""
    if not failed:
        return Decision(Verdict.SUCCEED)
    if permanent or attempt >= max_attempts:
        return Decision(Verdict.FAIL)
    delay = retry_delay(policy, attempt, rand=rand, retry_after=retry_after)
    return Decision(Verdict.RETRY, now + timedelta(seconds=delay), delay)
