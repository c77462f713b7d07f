"""Every change of a job's status: one guarded UPDATE each, built from the table in `states.py` (the worker's
hot path, claims and successes, in `claims.py`).

Each function says whether it took effect. A guard that no longer holds (another worker, a
concurrent reconciler pass, a cancellation) makes the statement match nothing, and the caller
drops its stale intent instead of overwriting newer state.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import (
    Connection,
    Integer,
    String,
    Uuid,
    bindparam,
    case,
    column,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from ledger.schema import jobs, status_in, status_in_rows_found_by_key
from ledger.states import TRANSITIONS, WAITING, Outcome, Status
from ledger.timestamps import UTCDateTime


def transition_guard(name: str, *, found_by_key: bool = False) -> tuple[Any, Status]:
    """The WHERE test of transition `name` (see `states.TRANSITIONS`) and the status it moves to."""
    sources, target = TRANSITIONS[name]
    return (status_in_rows_found_by_key(sources) if found_by_key else status_in(sources)), target


class Dispatch(msgspec.Struct, frozen=True, gc=False):
    """A message to send to Redis for a job: its Redis id is derived from `seq`.

    A Struct, not a frozen dataclass: a batch builds one per item, in a tenth of the time (bench/README.md)."""

    job_id: uuid.UUID
    seq: int
    due_at: datetime
    #: The job's destination (`jobs.destination`), carried by its message so a worker admits it before its claim;
    #: "" when unknown (the worker then skips admission).
    destination: str = ""


def _build_fail() -> Any:
    guard, target = transition_guard("fail")
    now = bindparam("now", type_=UTCDateTime())
    return (
        update(jobs)
        .where(jobs.c.id == bindparam("job_id"), guard, jobs.c.attempts == bindparam("attempt"))
        .values(
            status=target,
            last_outcome=bindparam("outcome"),
            last_error=bindparam("error"),
            updated_at=now,
            completed_at=now,
            claimed_at=None,
        )
    )


def _build_schedule_retry(*, parked: bool) -> Any:
    guard, target = transition_guard("schedule_retry")
    return (
        update(jobs)
        .where(jobs.c.id == bindparam("job_id"), guard, jobs.c.attempts == bindparam("attempt"))
        .values(
            status=target,
            next_attempt_at=bindparam("due_at", type_=UTCDateTime()),
            # Held, the seq is that of the message that claimed it: positive, so a parked one is not.
            dispatch_seq=-jobs.c.dispatch_seq if parked else jobs.c.dispatch_seq + 1,
            last_outcome=Outcome.TRANSIENT_ERROR.value,
            last_error=bindparam("error"),
            updated_at=bindparam("now", type_=UTCDateTime()),
            claimed_at=None,
        )
        .returning(jobs.c.dispatch_seq, jobs.c.destination)
    )


def _build_throttle(*, parked: bool) -> Any:
    guard, target = transition_guard("throttle")
    return (
        update(jobs)
        .where(
            jobs.c.id == bindparam("job_id"),
            guard,
            jobs.c.attempts == bindparam("attempt"),
            jobs.c.throttles < bindparam("max_throttles"),
        )
        .values(
            status=target,
            next_attempt_at=bindparam("due_at", type_=UTCDateTime()),
            dispatch_seq=-jobs.c.dispatch_seq if parked else jobs.c.dispatch_seq + 1,
            max_attempts=jobs.c.max_attempts + 1,
            throttles=jobs.c.throttles + 1,
            last_outcome=Outcome.THROTTLED.value,
            last_error=bindparam("error"),
            updated_at=bindparam("now", type_=UTCDateTime()),
            claimed_at=None,
        )
        .returning(jobs.c.dispatch_seq, jobs.c.destination)
    )


_FAIL = _build_fail()
_THROTTLE = _build_throttle(parked=False)
_PARK_THROTTLED = _build_throttle(parked=True)
_SCHEDULE_RETRY = _build_schedule_retry(parked=False)
_PARK_RETRY = _build_schedule_retry(parked=True)


def fail(conn: Connection, job_id: uuid.UUID, attempt: int, *, now: datetime, outcome: Outcome, error: str) -> bool:
    """PROCESSING at `attempt` → FAILED (a permanent error, or the last attempt failed)."""
    params = {"job_id": job_id, "attempt": attempt, "now": now, "outcome": outcome.value, "error": error}
    return conn.execute(_FAIL, params).rowcount == 1


def schedule_retry(
    conn: Connection, job_id: uuid.UUID, attempt: int, *, now: datetime, due_at: datetime, error: str
) -> Dispatch | None:
    """PROCESSING at `attempt` → RETRY due at `due_at`, with a new dispatch to send after commit."""
    params = {"job_id": job_id, "attempt": attempt, "now": now, "due_at": due_at, "error": error}
    row = conn.execute(_SCHEDULE_RETRY, params).first()
    return None if row is None else Dispatch(job_id, row.dispatch_seq, due_at, row.destination)


def park_retry(
    conn: Connection, job_id: uuid.UUID, attempt: int, *, now: datetime, due_at: datetime, error: str
) -> bool:
    """`schedule_retry` with no message to send: a reconciler pass dispatches it as it comes due (`redispatch`).
    Its `dispatch_seq` is the negated seq of its last message, so none of its messages can claim it."""
    params = {"job_id": job_id, "attempt": attempt, "now": now, "due_at": due_at, "error": error}
    return conn.execute(_PARK_RETRY, params).first() is not None


def throttle(
    conn: Connection,
    job_id: uuid.UUID,
    attempt: int,
    *,
    now: datetime,
    due_at: datetime,
    error: str,
    max_throttles: int,
    parked: bool = False,
) -> Dispatch | bool | None:
    """PROCESSING at `attempt`, throttled fewer than `max_throttles` times → RETRY due at `due_at`, the attempt
    recorded `throttled` and given back (max_attempts + 1). The new dispatch to send, or (`parked`, as
    `park_retry`) True; None when the guard failed (the caller then counts the answer as a transient error)."""
    params = {"job_id": job_id, "attempt": attempt, "now": now, "due_at": due_at, "error": error,
              "max_throttles": max_throttles}  # fmt: skip
    row = conn.execute(_PARK_THROTTLED if parked else _THROTTLE, params).first()
    if row is None:
        return None
    return True if parked else Dispatch(job_id, row.dispatch_seq, due_at, row.destination)


#: How `give_up_deferred` names each reason in `last_error`.
DEFERRAL_REASONS = {
    "circuit": "circuit open",
    "throttled": "throttled",
    "limit": "at its limit",
    "rate": "rate limited",
}


def _build_record_deferrals(postgresql: bool) -> Any:
    """One UPDATE for a batch of deferrals: PostgreSQL's reads them from `unnest` of three arrays (one statement
    text for every batch size), SQLite's runs once per deferral (`executemany`). A row already recorded with the
    same reason is left alone, unwritten."""
    if postgresql:
        arrays = (
            bindparam("ids", type_=ARRAY(Uuid())),
            bindparam("seqs", type_=ARRAY(Integer())),
            bindparam("reasons", type_=ARRAY(String())),
        )
        deferrals = (
            func.unnest(*arrays)
            .table_valued(column("id", Uuid()), column("seq", Integer()), column("reason", String()))
            .render_derived(name="deferrals", with_types=False)
        )
        job_id, seq, reason = deferrals.c.id, deferrals.c.seq, deferrals.c.reason
        waiting = status_in_rows_found_by_key(WAITING)
    else:
        job_id, seq, reason = bindparam("job_id"), bindparam("seq"), bindparam("reason")
        waiting = status_in(WAITING)
    return (
        update(jobs)
        .where(
            jobs.c.id == job_id,
            jobs.c.dispatch_seq == seq,
            waiting,
            or_(jobs.c.deferred_since.is_(None), jobs.c.deferred_reason.is_distinct_from(reason)),
        )
        .values(
            deferred_since=func.coalesce(jobs.c.deferred_since, bindparam("now", type_=UTCDateTime())),
            deferred_reason=reason,
        )
    )


_RECORD_DEFERRALS = {postgresql: _build_record_deferrals(postgresql) for postgresql in (False, True)}


def record_deferrals(conn: Connection, deferred: list[tuple[uuid.UUID, int, str]], *, now: datetime) -> int:
    """Each waiting job `(job_id, seq, reason)` of that dispatch was deferred on its destination (no attempt):
    since when (kept from its first deferral, until a claim clears it) and why. One statement for the batch; says
    how many jobs it wrote (one already recorded with the same reason is not written again)."""
    if not deferred:
        return 0
    if conn.dialect.name == "postgresql":
        ids, seqs, reasons = (list(values) for values in zip(*deferred, strict=True))
        params: Any = {"ids": ids, "seqs": seqs, "reasons": reasons, "now": now}
    else:
        params = [{"job_id": job_id, "seq": seq, "reason": reason, "now": now} for job_id, seq, reason in deferred]
    return conn.execute(_RECORD_DEFERRALS[conn.dialect.name == "postgresql"], params).rowcount


def park_deferred(
    conn: Connection, job_id: uuid.UUID, seq: int, *, now: datetime, due_at: datetime, reason: str
) -> bool:
    """A waiting job deferred until `due_at`, beyond the schedule horizon: its message goes (the seq negated, as
    `park_retry` does) and a reconciler pass dispatches it as it comes due; the deferral is recorded."""
    return (
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.dispatch_seq == seq, status_in(WAITING))
            .values(
                next_attempt_at=due_at,
                dispatch_seq=-jobs.c.dispatch_seq,
                deferred_since=func.coalesce(jobs.c.deferred_since, now),
                deferred_reason=reason,
                updated_at=now,
            )
        ).rowcount
        == 1
    )


def give_up_deferred(
    conn: Connection, *, now: datetime, max_deferral: float, job_ids: list[uuid.UUID] | None = None, limit: int = 500
) -> list[uuid.UUID]:
    """Waiting jobs deferred for more than `max_deferral` seconds (of `job_ids`, or up to `limit` of any, read
    through the index of deferred jobs) → FAILED, with a `last_error` naming the destination and why."""
    guard, target = transition_guard("give_up_deferred")
    cutoff = now - timedelta(seconds=max_deferral)
    overdue = (guard, jobs.c.deferred_since.is_not(None), jobs.c.deferred_since < cutoff)
    if job_ids is not None:
        if not job_ids:
            return []
        chosen: Any = jobs.c.id.in_(job_ids)
    else:
        candidates = select(jobs.c.id).where(*overdue).order_by(jobs.c.deferred_since).limit(limit)
        chosen = jobs.c.id.in_(candidates.scalar_subquery())
    why = case(
        *((jobs.c.deferred_reason == reason, literal(text)) for reason, text in DEFERRAL_REASONS.items()),
        else_=jobs.c.deferred_reason,
    )
    error = literal(f"waited more than {max_deferral:g} s on destination ", String()).concat(jobs.c.destination)
    rows = conn.execute(
        update(jobs)
        .where(chosen, *overdue)
        .values(status=target, last_error=error.concat(": ").concat(why), updated_at=now, completed_at=now)
        .returning(jobs.c.id)
    ).all()
    return [row.id for row in rows]


def cancel(conn: Connection, job_id: uuid.UUID, *, scope: str, now: datetime) -> bool:
    """PENDING/RETRY → CANCELLED: no worker holds it, and no message of it will claim it any more."""
    guard, target = transition_guard("cancel")
    result = conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.scope == scope, guard)
        .values(status=target, updated_at=now, completed_at=now)
    )
    return result.rowcount == 1



def retried_values(target: Any, *, now: datetime, extra_attempts: int) -> dict[str, Any]:
    """The columns a manual retry sets on a FAILED job (one or many): a fresh budget and a new dispatch."""
    return {
        "status": target,
        "max_attempts": jobs.c.attempts + extra_attempts,
        "next_attempt_at": now,
        "dispatch_seq": jobs.c.dispatch_seq + 1,
        "updated_at": now,
        "completed_at": None,
        # A job that failed waiting on its destination starts its deferral afresh.
        "deferred_since": None,
        "deferred_reason": None,
    }

def manual_retry(conn: Connection, job_id: uuid.UUID, *, now: datetime, extra_attempts: int) -> Dispatch | None:
    """FAILED → PENDING with `extra_attempts` more attempts, due now; the history is kept."""
    guard, target = transition_guard("manual_retry")
    row = conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, guard)
        .values(**retried_values(target, now=now, extra_attempts=extra_attempts))
        .returning(jobs.c.dispatch_seq, jobs.c.destination)
    ).first()
    return None if row is None else Dispatch(job_id, row.dispatch_seq, now, row.destination)


def expire(
    conn: Connection, claims: list[tuple[uuid.UUID, int]], *, now: datetime, cutoff: datetime, error: str
) -> tuple[list[Dispatch], list[uuid.UUID]]:
    """Take back claims `(job_id, attempt)` made before `cutoff`: → RETRY due now, or FAILED when none remain.

    Guarded on the status and attempt that were read, so a job that completed or was claimed
    again meanwhile is left alone. Returns the dispatches to send and the jobs that failed.
    """
    if not claims:
        return [], []
    held = tuple_(jobs.c.id, jobs.c.attempts).in_(claims)
    common = {"last_outcome": Outcome.TIMED_OUT, "last_error": error, "updated_at": now, "claimed_at": None}
    guard, target = transition_guard("expire_to_retry")
    retried = conn.execute(
        update(jobs)
        .where(held, guard, jobs.c.claimed_at < cutoff, jobs.c.attempts < jobs.c.max_attempts)
        .values(status=target, next_attempt_at=now, dispatch_seq=jobs.c.dispatch_seq + 1, **common)
        .returning(jobs.c.id, jobs.c.dispatch_seq, jobs.c.destination)
    ).all()
    guard, target = transition_guard("expire_to_failed")
    failed = conn.execute(
        update(jobs)
        .where(held, guard, jobs.c.claimed_at < cutoff, jobs.c.attempts >= jobs.c.max_attempts)
        .values(status=target, completed_at=now, **common)
        .returning(jobs.c.id)
    ).all()
    return [Dispatch(r.id, r.dispatch_seq, now, r.destination) for r in retried], [r.id for r in failed]


def redispatch(conn: Connection, lost: list[tuple[uuid.UUID, int]], *, now: datetime) -> list[Dispatch]:
    """Give waiting jobs `(job_id, seq)` whose message is gone, never sent or parked (seq <= 0) a new dispatch;
    guarded on the seq read, so of two overlapping reconciler passes only one re-dispatches each job."""
    if not lost:
        return []
    rows = conn.execute(
        update(jobs)
        .where(tuple_(jobs.c.id, jobs.c.dispatch_seq).in_(lost), status_in(WAITING))
        .values(dispatch_seq=func.abs(jobs.c.dispatch_seq) + 1, updated_at=now)
        .returning(jobs.c.id, jobs.c.dispatch_seq, jobs.c.next_attempt_at, jobs.c.destination)
    ).all()
    return [Dispatch(r.id, r.dispatch_seq, r.next_attempt_at, r.destination) for r in rows]


def _release(conn: Connection, *where: Any, now: datetime) -> list[Dispatch]:
    """Jobs matching `where` → due now, with a new dispatch each: the messages they wait on become stale."""
    rows = conn.execute(
        update(jobs)
        .where(*where)
        .values(dispatch_seq=func.abs(jobs.c.dispatch_seq) + 1, next_attempt_at=now, updated_at=now)
        .returning(jobs.c.id, jobs.c.dispatch_seq, jobs.c.next_attempt_at, jobs.c.destination)
    ).all()
    return [Dispatch(r.id, r.dispatch_seq, r.next_attempt_at, r.destination) for r in rows]


def release_deferred(conn: Connection, destination: str, reasons: list[str], *, now: datetime) -> list[Dispatch]:
    """Waiting jobs of `destination` deferred for one of `reasons` (an operator closed its circuit, lifted its
    pause) → due now, with a new dispatch each. Found through the partial index of waiting jobs by destination."""
    where = (status_in(WAITING), jobs.c.destination == destination, jobs.c.deferred_reason.in_(reasons))
    return _release(conn, *where, now=now)


def release_deferrals(conn: Connection, deferred: list[tuple[uuid.UUID, int, str]], *, now: datetime) -> list[Dispatch]:
    """Waiting jobs `(job_id, seq, reason)` still on that dispatch (parked: its negated seq) and recorded deferred
    for that reason → due now, with a new dispatch each: a worker found that reason gone once it had recorded it
    (`FlowControl._release_lifted`). Found by key."""
    if not deferred:
        return []
    chosen = tuple_(jobs.c.id, jobs.c.dispatch_seq, jobs.c.deferred_reason).in_(deferred)
    return _release(conn, jobs.c.id.in_([job_id for job_id, *_ in deferred]), chosen,
                    status_in_rows_found_by_key(WAITING), now=now)  # fmt: skip
