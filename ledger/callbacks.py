"""Status callbacks in the ledger: their lifecycle, one guarded statement per transition, and the API's reads (the
reconciler's statements are in `ledger.callback_recovery`).

A callback is armed by a trigger on `jobs` in the transaction that finishes its job (migrations 0006 and 0010:
already claimed for its first attempt when its worker finished it, that worker then POSTing it with no message);
from then on it lives like a job of its own: dispatched under a seq that fences older messages, claimed for one
attempt at a time, retried, and taken back by the reconciler when its worker vanished. A callback only claims while
its job is still in the status it reports, so one armed before a manual retry waits for the job's next finish, which
re-arms it.
"""

from __future__ import annotations

import uuid
from collections import namedtuple
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    Integer,
    Uuid,
    and_,
    any_,
    bindparam,
    column,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from ledger.database import DriverStatement, array_literal, postgres
from ledger.queries import JOB_COLUMNS, JobView, job_view
from ledger.schema import callbacks, jobs
from ledger.states import WAITING, Status
from ledger.timestamps import UTCDateTime
from ledger.transitions import Dispatch

#: name → (statuses the callback must be in, status it moves to); as `states.TRANSITIONS` for jobs.
TRANSITIONS: dict[str, tuple[frozenset[Status], Status]] = {
    "claim": (WAITING, Status.PROCESSING),
    "give_back": (frozenset({Status.PROCESSING}), Status.PENDING),
    "succeed": (frozenset({Status.PROCESSING}), Status.SUCCESS),
    "schedule_retry": (frozenset({Status.PROCESSING}), Status.RETRY),
    "fail": (frozenset({Status.PROCESSING}), Status.FAILED),
    "expire_to_retry": (frozenset({Status.PROCESSING}), Status.RETRY),
    "expire_to_failed": (frozenset({Status.PROCESSING}), Status.FAILED),
}

#: A message may arrive this much before its due time (clocks of different hosts) and still claim.
EARLY_CLAIM_TOLERANCE = timedelta(milliseconds=500)
#: The seq of the message that the worker that finished a job sent for the callback the ledger armed already
#: dispatched (migration 0009): it claims that dispatch whatever the row's seq, while never attempted. Workers since
#: 0010 send none; the messages of rows armed before it may still be queued.
ARMED_SEQ = 0
#: The attempt of a callback armed claimed for the worker that finished its job (migration 0010).
ARMED_ATTEMPT = 1


def _is_dispatch(seq: int) -> Any:
    """The row's current dispatch is `seq`, or the armed one (`ARMED_SEQ`) while never attempted."""
    if seq == ARMED_SEQ:
        return and_(callbacks.c.dispatch_seq > 0, callbacks.c.attempts == 0)
    return callbacks.c.dispatch_seq == seq


def transition_guard(name: str) -> tuple[Any, Status]:
    sources, target = TRANSITIONS[name]
    return callbacks.c.status.in_(sorted(s.value for s in sources)), target


def status_in(statuses: frozenset[Status]) -> Any:
    """`callbacks.status IN (...)` with literal values, as the partial indexes' predicates are written, so that the
    PostgreSQL and SQLite planners use them (see `schema.status_in`)."""
    values = [literal_column(f"'{s.value}'") for s in sorted(statuses)]
    return callbacks.c.status == values[0] if len(values) == 1 else callbacks.c.status.in_(values)


def reports_job_status() -> Any:
    """The callback's job is still in the status it reports (not retried by an operator since)."""
    return callbacks.c.event == select(jobs.c.status).where(jobs.c.id == callbacks.c.job_id).scalar_subquery()


DISPATCH_COLUMNS = (callbacks.c.job_id, callbacks.c.dispatch_seq, callbacks.c.next_attempt_at, callbacks.c.destination)


def dispatches_of(rows: Any) -> list[Dispatch]:
    return [Dispatch(r.job_id, r.dispatch_seq, r.next_attempt_at, r.destination) for r in rows]


def dispatch_armed(conn: Connection, job_ids: list[uuid.UUID], *, now: datetime) -> list[Dispatch]:
    """The callbacks of `job_ids` armed and never sent (their jobs just finished) → a first dispatch each, to send
    after commit; guarded on the seq, so a reconciler pass doing the same meanwhile sends each once."""
    if not job_ids:
        return []
    driver = postgres(conn)
    if driver is None:
        return dispatches_of(conn.execute(_DISPATCH_ARMED, {"job_ids": job_ids, "now": now}))
    return [Dispatch(*row) for row in _DRIVER_DISPATCH_ARMED.execute(driver, {"job_ids": array_literal(job_ids),
                                                                             "now": now})]  # fmt: skip


def _build_dispatch_armed(postgresql: bool) -> Any:
    """Built once: the workers send the callbacks of every batch of finished jobs, and SQLAlchemy's rendering of an
    IN list of ids per call cost them more CPU than the jobs' own statements (bench/README.md)."""
    sources, _ = TRANSITIONS["claim"]
    if postgresql:
        matching = (callbacks.c.job_id == any_(bindparam("job_ids", type_=ARRAY(Uuid()))),
                    _status_found_by_key(sources))  # fmt: skip
    else:
        matching = (callbacks.c.job_id.in_(bindparam("job_ids", expanding=True)), transition_guard("claim")[0])
    return (
        update(callbacks)
        .where(*matching, callbacks.c.dispatch_seq <= 0)
        .values(dispatch_seq=func.abs(callbacks.c.dispatch_seq) + 1, updated_at=bindparam("now", type_=UTCDateTime()))
        .returning(*DISPATCH_COLUMNS)
    )


def _pairs(second: str, prefix: str = "") -> Any:
    """PostgreSQL's `unnest(:<prefix><second>_ids, :<prefix><second>s) AS <prefix><second>_pairs(id, <second>)`: a
    batch as two arrays, one statement text (prepared once) for every batch size, each pair found through the
    primary key."""
    name = f"{prefix}{second}"
    arrays = (bindparam(f"{name}_ids", type_=ARRAY(Uuid())), bindparam(f"{name}s", type_=ARRAY(Integer())))
    return (
        func.unnest(*arrays)
        .table_valued(column("id", Uuid()), column(second, Integer()))
        .render_derived(name=f"{name}_pairs", with_types=False)
    )


def _status_found_by_key(statuses: frozenset[Status]) -> Any:
    """`callbacks.status IN (...)` that no partial index's predicate matches, for statements that find their rows
    by key (as `schema.status_in_rows_found_by_key` for jobs)."""
    return callbacks.c.status.concat(literal_column("''")).in_(
        [literal_column(f"'{s.value}'") for s in sorted(statuses)]
    )


#: What a claim returns on PostgreSQL; labelled, since `attempts` names a column of both tables.
_CLAIMED_COLUMNS = (callbacks.c.job_id, callbacks.c.event.label("callback_event"),
                    callbacks.c.attempts.label("callback_attempts"), *JOB_COLUMNS, jobs.c.callback_url)  # fmt: skip


def _build_claim(postgresql: bool) -> Any:
    """Dispatches waiting and due, their job still in the status they report → PROCESSING, attempts + 1. On
    PostgreSQL with the job's columns as they are now (UPDATE … FROM jobs); SQLite's RETURNING cannot name them."""
    sources, target = TRANSITIONS["claim"]
    now = bindparam("now", type_=UTCDateTime())
    claiming = update(callbacks).values(
        status=target, attempts=callbacks.c.attempts + 1, claimed_at=now, updated_at=now
    )
    due = callbacks.c.next_attempt_at <= bindparam("due_by", type_=UTCDateTime())
    if not postgresql:
        matching = or_(
            tuple_(callbacks.c.job_id, callbacks.c.dispatch_seq).in_(bindparam("dispatches", expanding=True)),
            and_(callbacks.c.job_id.in_(bindparam("armed", expanding=True)), _is_dispatch(ARMED_SEQ)),
        )
        return claiming.where(matching, transition_guard("claim")[0], due, reports_job_status()).returning(
            callbacks.c.job_id, callbacks.c.event, callbacks.c.attempts
        )
    pairs = _pairs("seq")
    return claiming.where(
        callbacks.c.job_id == pairs.c.id,
        callbacks.c.dispatch_seq > 0,
        or_(callbacks.c.dispatch_seq == pairs.c.seq, and_(pairs.c.seq == ARMED_SEQ, callbacks.c.attempts == 0)),
        _status_found_by_key(sources),
        due,
        jobs.c.id == callbacks.c.job_id,
        jobs.c.status == callbacks.c.event,
    ).returning(*_CLAIMED_COLUMNS)


def build_succeed(postgresql: bool, now: Any = None, prefix: str = "") -> Any:
    """The "succeed" transition of a batch: each `(job_id, attempt)` PROCESSING at that attempt → SUCCESS, returning
    the ids that took. `now`: what it stamps (`:now` by default); `prefix`: of its parameters' names
    (`<prefix>held`, or on PostgreSQL `<prefix>attempt_ids` and `<prefix>attempts`), for a statement that holds it
    beside others (the jobs' of a worker's batch, `ledger.claims`)."""
    sources, target = TRANSITIONS["succeed"]
    now = bindparam("now", type_=UTCDateTime()) if now is None else now
    succeeding = update(callbacks).values(status=target, last_error=None, claimed_at=None, updated_at=now)
    if not postgresql:
        matching = tuple_(callbacks.c.job_id, callbacks.c.attempts).in_(bindparam(f"{prefix}held", expanding=True))
        return succeeding.where(matching, transition_guard("succeed")[0]).returning(callbacks.c.job_id)
    pairs = _pairs("attempt", prefix)
    return succeeding.where(
        # `= ANY` beside the join: every plan reads the asked rows by primary key, the generic plan of a kept
        # connection too (as `ledger.claims._among`).
        callbacks.c.job_id == any_(bindparam(f"{prefix}attempt_ids", type_=ARRAY(Uuid()))),
        callbacks.c.job_id == pairs.c.id,
        callbacks.c.attempts == pairs.c.attempt,
        _status_found_by_key(sources),
    ).returning(callbacks.c.job_id)


def _build_succeed_and_claim() -> Any:
    """Both in one PostgreSQL statement (one commit): the successes' ids flagged False, then the claimed rows flagged
    True. No row is in both: one guard wants PROCESSING, the other a waiting status."""
    flag = Boolean()
    succeeded = build_succeed(postgresql=True).cte("succeeded")
    claimed = _build_claim(postgresql=True).cte("claimed")
    return select(literal(True, flag), *claimed.c).union_all(
        select(literal(False, flag), succeeded.c.job_id, *(null() for _ in range(len(claimed.c) - 1)))
    )


# Built once: the worker runs them for every callback, and building a statement costs more CPU than running it.
_CLAIM, _SUCCEED = _build_claim(postgresql=False), build_succeed(postgresql=False)
_DISPATCH_ARMED, _DRIVER_DISPATCH_ARMED = _build_dispatch_armed(False), DriverStatement(_build_dispatch_armed(True))
_DRIVER_SUCCEED_AND_CLAIM = DriverStatement(_build_succeed_and_claim())
_CLAIMED_JOB = select(*JOB_COLUMNS, jobs.c.callback_url).where(jobs.c.id.in_(bindparam("ids", expanding=True)))


@dataclass(frozen=True)
class ClaimedCallback:
    """A callback this worker now holds for attempt number `attempt`, with what its body reports."""

    job: JobView
    url: str
    event: Status
    attempt: int


def succeed_and_claim(
    conn: Connection,
    attempts: list[tuple[uuid.UUID, int]],
    dispatches: list[tuple[uuid.UUID, int]],
    *,
    now: datetime,
) -> tuple[list[bool], list[ClaimedCallback | None]]:
    """A worker's batch: each `(job_id, attempt)` PROCESSING at that attempt → SUCCESS, and each `(job_id, seq)`,
    waiting and due, `seq` its current dispatch, its job still in the status it reports → PROCESSING, attempts + 1,
    with the job as it is now (`seq` ARMED_SEQ: the dispatch its finishing worker was armed with). On PostgreSQL one
    statement; answers in the order asked (of two claims of one dispatch only the first takes). A claim that fails
    its guard (a stale message) answers None."""
    driver = postgres(conn)
    due_by = now + EARLY_CLAIM_TOLERANCE
    rows: list[Any]
    if driver is None:
        succeeded = set()
        if attempts:
            succeeded = {row.job_id for row in conn.execute(_SUCCEED, {"held": attempts, "now": now})}
        rows = []
        if dispatches:
            sent = [(job_id, seq) for job_id, seq in dispatches if seq != ARMED_SEQ]
            armed = [job_id for job_id, seq in dispatches if seq == ARMED_SEQ]
            params = {"dispatches": sent, "armed": armed, "now": now, "due_by": due_by}
            claims = conn.execute(_CLAIM, params).all()
            by_id = {row.id: row for row in conn.execute(_CLAIMED_JOB, {"ids": [row.job_id for row in claims]})}
            rows = [(row.event, row.attempts, by_id[row.job_id]) for row in claims]
    else:
        params = {
            "now": now,
            "due_by": due_by,
            "attempt_ids": array_literal(job_id for job_id, _ in attempts),
            "attempts": array_literal(n for _, n in attempts),
            "seq_ids": array_literal(job_id for job_id, _ in dispatches),
            "seqs": array_literal(seq for _, seq in dispatches),
        }
        succeeded, rows = set(), []
        for row in _DRIVER_SUCCEED_AND_CLAIM.execute(driver, params).fetchall():
            if row[0]:
                rows.append((row[2], row[3], _JobRow(*row[4:])))
            else:
                succeeded.add(row[1])
    claimed = {
        job.id: ClaimedCallback(job_view(job), job.callback_url, Status(event), attempt) for event, attempt, job in rows
    }
    return [job_id in succeeded for job_id, _ in attempts], [claimed.pop(job_id, None) for job_id, _ in dispatches]


#: A row of `JOB_COLUMNS` and `callback_url`, read by name as `job_view` does, from the driver's plain tuples.
_JobRow = namedtuple("_JobRow", [c.name for c in JOB_COLUMNS] + ["callback_url"])  # type: ignore[misc]


def claim(conn: Connection, job_id: uuid.UUID, seq: int, *, now: datetime) -> ClaimedCallback | None:
    """Claim one dispatch; see `succeed_and_claim`."""
    return succeed_and_claim(conn, [], [(job_id, seq)], now=now)[1][0]


def _held(job_id: uuid.UUID, attempt: int, name: str) -> tuple[tuple[Any, ...], Status]:
    guard, target = transition_guard(name)
    return (callbacks.c.job_id == job_id, callbacks.c.attempts == attempt, guard), target


def succeed(conn: Connection, job_id: uuid.UUID, attempt: int, *, now: datetime) -> bool:
    """PROCESSING at `attempt` → SUCCESS; see `succeed_and_claim`."""
    return succeed_and_claim(conn, [(job_id, attempt)], [], now=now)[0][0]


def fail(conn: Connection, job_id: uuid.UUID, attempt: int, *, now: datetime, error: str) -> bool:
    """PROCESSING at `attempt` → FAILED (a permanent error, or the last attempt failed)."""
    held, target = _held(job_id, attempt, "fail")
    values = {"status": target, "last_error": error, "claimed_at": None, "updated_at": now}
    return conn.execute(update(callbacks).where(*held).values(**values)).rowcount == 1


def schedule_retry(
    conn: Connection, job_id: uuid.UUID, attempt: int, *, now: datetime, due_at: datetime, error: str, parked: bool
) -> Dispatch | bool:
    """PROCESSING at `attempt` → RETRY due at `due_at`: the dispatch to send after commit, or (`parked`, due beyond
    the schedule horizon) True, left for a reconciler pass to send as it comes due; False when the guard failed."""
    held, target = _held(job_id, attempt, "schedule_retry")
    seq = -callbacks.c.dispatch_seq if parked else callbacks.c.dispatch_seq + 1
    row = conn.execute(
        update(callbacks)
        .where(*held)
        .values(
            status=target, next_attempt_at=due_at, dispatch_seq=seq, last_error=error, claimed_at=None, updated_at=now
        )
        .returning(*DISPATCH_COLUMNS)
    ).first()
    if row is None:
        return False
    return True if parked else dispatches_of([row])[0]


def give_back(
    conn: Connection, job_id: uuid.UUID, attempt: int, *, now: datetime, due_at: datetime, parked: bool
) -> Dispatch | bool:
    """PROCESSING at `attempt`, never POSTed (its destination deferred it) → PENDING due at `due_at`, the attempt
    not counted: the dispatch to send after commit, or (`parked`, beyond the schedule horizon) True, for a reconciler
    pass to send as it comes due; False when the guard failed."""
    held, target = _held(job_id, attempt, "give_back")
    seq = -callbacks.c.dispatch_seq if parked else callbacks.c.dispatch_seq + 1
    values = {"status": target, "attempts": callbacks.c.attempts - 1, "next_attempt_at": due_at,
              "dispatch_seq": seq, "claimed_at": None, "updated_at": now}  # fmt: skip
    row = conn.execute(update(callbacks).where(*held).values(**values).returning(*DISPATCH_COLUMNS)).first()
    if row is None:
        return False
    return True if parked else dispatches_of([row])[0]


@dataclass(frozen=True)
class CallbackView:
    """What the API shows of a job's callback: None in `status` until the job has finished."""

    url: str
    event: Status | None
    status: Status | None
    attempts: int
    last_error: str | None


def callback_view(conn: Connection, job_id: uuid.UUID) -> CallbackView | None:
    """The callback of `job_id`, or None when the job has no `callback_url` (or does not exist)."""
    return callback_views(conn, [job_id]).get(job_id)


def callback_views(conn: Connection, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, CallbackView]:
    """The callbacks of those of `job_ids` that have a `callback_url`, by job id (one statement for a page)."""
    if not job_ids:
        return {}
    rows = conn.execute(
        select(
            jobs.c.id, jobs.c.callback_url, callbacks.c.event, callbacks.c.status, callbacks.c.attempts,
            callbacks.c.last_error,
        )
        .select_from(jobs.outerjoin(callbacks, callbacks.c.job_id == jobs.c.id))
        .where(jobs.c.id.in_(job_ids), jobs.c.callback_url.is_not(None))
    )  # fmt: skip
    return {
        row.id: CallbackView(
            row.callback_url,
            None if row.event is None else Status(row.event),
            None if row.status is None else Status(row.status),
            row.attempts or 0,
            row.last_error,
        )
        for row in rows
    }


def park(conn: Connection, job_id: uuid.UUID, seq: int, *, now: datetime, due_at: datetime) -> bool:
    """A waiting callback deferred on its destination until `due_at`, beyond the schedule horizon: its message goes
    (the seq negated) and a reconciler pass sends it as it comes due."""
    return (
        conn.execute(
            update(callbacks)
            .where(callbacks.c.job_id == job_id, _is_dispatch(seq), transition_guard("claim")[0])
            .values(next_attempt_at=due_at, dispatch_seq=-callbacks.c.dispatch_seq, updated_at=now)
        ).rowcount
        == 1
    )
