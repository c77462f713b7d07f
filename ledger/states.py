"""The job lifecycle: every status and every allowed transition, in one table."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class Outcome(StrEnum):
    """How one delivery attempt ended."""

    SUCCESS = "success"
    TRANSIENT_ERROR = "transient_error"
    PERMANENT_ERROR = "permanent_error"
    TIMED_OUT = "timed_out"
    #: The receiver asked us to slow down (429, a 503 with Retry-After, SMTP 421/450/451 about rate): the attempt
    #: gave its place in the job's budget back.
    THROTTLED = "throttled"


#: Statuses a worker may claim from, and that a producer may still cancel.
WAITING = frozenset({Status.PENDING, Status.RETRY})
#: Statuses that end a job; only a manual retry leaves one of them (FAILED).
FINISHED = frozenset({Status.SUCCESS, Status.FAILED, Status.CANCELLED})

#: name → (statuses the row must be in, status it moves to). Each transition in `transitions.py`
#: is one guarded UPDATE built from this table; nothing else writes a status.
TRANSITIONS: dict[str, tuple[frozenset[Status], Status]] = {
    "claim": (WAITING, Status.PROCESSING),
    "succeed": (frozenset({Status.PROCESSING}), Status.SUCCESS),
    "schedule_retry": (frozenset({Status.PROCESSING}), Status.RETRY),
    "fail": (frozenset({Status.PROCESSING}), Status.FAILED),
    "expire_to_retry": (frozenset({Status.PROCESSING}), Status.RETRY),
    "expire_to_failed": (frozenset({Status.PROCESSING}), Status.FAILED),
    "cancel": (WAITING, Status.CANCELLED),
    "manual_retry": (frozenset({Status.FAILED}), Status.PENDING),
    # A throttling answer gives its attempt back (max_attempts + 1), up to WJP_MAX_THROTTLES per job.
    "throttle": (frozenset({Status.PROCESSING}), Status.RETRY),
    # A job deferred on its destination (never claimed meanwhile) for longer than WJP_MAX_DEFERRAL.
    "give_up_deferred": (WAITING, Status.FAILED),
}


def allowed(source: Status, target: Status) -> bool:
    """Whether some transition moves a job from `source` to `target`."""
    return any(source in sources and target == dest for sources, dest in TRANSITIONS.values())
