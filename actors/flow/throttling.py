"""A throttling answer (429, a 503 with Retry-After, SMTP 421/450/451 about rate) gives its attempt back, with or
without flow control: `transitions.throttle`, up to WJP_MAX_THROTTLES per job."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Connection

from actors.backoff import decide
from actors.channels.base import TransientError
from actors.settings import Settings
from ledger import transitions
from ledger.claims import ClaimedJob
from ledger.transitions import Dispatch

log = logging.getLogger("wjp.worker")
T = TypeVar("T")


def give_back(
    job: ClaimedJob,
    error: TransientError,
    text: str,
    *,
    now: datetime,
    settings: Settings,
    rand: Callable[[], float],
    write: Callable[[Callable[[Connection], T]], T],
) -> Dispatch | bool | None:
    """Record attempt `job.attempt` as throttled by `error` (`text` in the ledger) and give it back: its next
    message to send (a Dispatch), True when parked in the ledger (beyond the schedule horizon), or None when the
    job had its most throttles (or was taken back): then the answer counts as a transient error. `write` runs a
    ledger statement, riding out an outage within the attempt's claim."""
    # The attempt given back: the backoff of a job with one more attempt, never before the Retry-After.
    due_at = decide(
        attempt=job.attempt, max_attempts=job.max_attempts + 1, failed=True, permanent=False,
        retry_after=error.retry_after, policy=settings.backoff, now=now, rand=rand,
    ).due_at  # fmt: skip
    assert due_at is not None
    parked = (due_at - now).total_seconds() > settings.schedule_horizon
    most = settings.flow.max_throttles
    result = write(
        lambda conn: transitions.throttle(
            conn, job.id, job.attempt, now=now, due_at=due_at, error=text, max_throttles=most, parked=parked
        )
    )
    if result is not None:
        log.info("🐢 Job %s throttled; attempt given back, next at %s (%s)", job.id, due_at.isoformat(), text)
    return result
