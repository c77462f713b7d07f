"""The worker's hot path: claiming dispatched jobs and recording successes, batched and prepared once.

Each statement is guarded as every transition is (`transitions.transition_guard`), finds its rows by key, and answers in
the order asked; a claim retried after its commit went unanswered recognises its own rows by the claim token.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    Integer,
    Uuid,
    any_,
    bindparam,
    cast,
    column,
    func,
    literal,
    null,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from ledger import callbacks
from ledger.callbacks import ARMED_ATTEMPT, ClaimedCallback
from ledger.database import DriverStatement, array_literal, postgres
from ledger.queries import JobView
from ledger.schema import jobs, status_in, status_in_rows_found_by_key
from ledger.states import Outcome, Status
from ledger.timestamps import UTCDateTime, utcnow
from ledger.transitions import transition_guard

#: A message may arrive this much before its due time (clocks of different hosts) and still claim.
EARLY_CLAIM_TOLERANCE = timedelta(milliseconds=500)
#: What a success returns of a job with a status callback, beside its id: the rest of the job's GET body that its
#: claim did not return, for the callback the same statement armed claimed for this worker (migration 0010).
_FINISHED_COLUMNS = (jobs.c.destination, jobs.c.idempotency_key, jobs.c.send_at, jobs.c.created_at, jobs.c.updated_at)
#: The prefix of the status callbacks' deliveries' parameters (`callbacks.build_succeed`), apart from the jobs'.
_DELIVERED = "callback_"


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker now holds for attempt number `attempt`."""

    id: uuid.UUID
    recipient: str
    channel: str
    message: str
    subject: str | None
    metadata: dict[str, Any] | None
    attempt: int
    max_attempts: int
    #: Where its status callback goes once it finishes; None without one.
    callback_url: str | None = None


@dataclass(frozen=True)
class Finished:
    """A job with a status callback, as its success statement left it: with its `ClaimedJob`, the job's GET body."""

    destination: str
    idempotency_key: str
    send_at: datetime | None
    created_at: datetime
    #: Also its `completed_at`: a success stamps both.
    updated_at: datetime


def claimed_by_its_worker(job: ClaimedJob, finished: Finished) -> ClaimedCallback:
    """The callback that the statement recording `job`'s success armed claimed for this worker (migration 0010),
    with the job as that statement left it: what the worker's claim read of it, and what the success returned."""
    view = JobView(
        id=job.id, status=Status.SUCCESS, recipient=job.recipient, channel=job.channel,
        destination=finished.destination, idempotency_key=finished.idempotency_key, subject=job.subject,
        metadata=job.metadata, send_at=finished.send_at, attempts=job.attempt, max_attempts=job.max_attempts,
        next_attempt_at=None, last_error=None, created_at=finished.created_at, updated_at=finished.updated_at,
        completed_at=finished.updated_at,
    )  # fmt: skip
    return ClaimedCallback(view, job.callback_url or "", Status.SUCCESS, ARMED_ATTEMPT)


def _pairs(second: str, ids: str) -> Any:
    """PostgreSQL's `unnest(:<ids>, :<second>s) AS pairs(id, <second>)`: a batch as two arrays, so that one
    statement text (prepared once) serves every batch size, and each pair is found through the primary key."""
    arrays = (bindparam(ids, type_=ARRAY(Uuid())), bindparam(f"{second}s", type_=ARRAY(Integer())))
    return (
        func.unnest(*arrays)
        .table_valued(column("id", Uuid()), column(second, Integer()))
        .render_derived(name="pairs", with_types=False)
    )


def _among(ids: str) -> Any:
    """`jobs.id = ANY(:<ids>)`, beside the join with `_pairs`: every plan then reads the asked rows by primary key,
    even the generic plan a kept connection made on an empty or just-truncated table, where joining `jobs` to the
    pairs read the whole primary key for every statement (bench/README.md, 2026-12-03 17:20)."""
    return jobs.c.id == any_(bindparam(ids, type_=ARRAY(Uuid())))


def _clock(postgresql: bool) -> Any:
    """The time a hot-path statement stamps its rows with: `:now`, or when it is NULL (`database_clock`), the
    database's own, so that a claim's time and the reconciler's cutoff are read from one clock whatever the
    skew between hosts. SQLite runs in this process: its host's clock is the process's (`_stamp`)."""
    now = bindparam("now", type_=UTCDateTime())
    return func.coalesce(now, func.statement_timestamp(), type_=UTCDateTime()) if postgresql else now


def _stamp(now: datetime, database_clock: bool, postgresql: bool) -> datetime | None:
    if not database_clock:
        return now
    return None if postgresql else utcnow()


#: What a claim returns, in the order of `ClaimedJob`'s fields.
_CLAIMED_COLUMNS = tuple(
    jobs.c[name]
    for name in (
        "id", "recipient", "channel", "message", "subject", "metadata", "attempts", "max_attempts", "callback_url"
    )
)  # fmt: skip


def _build_claim(postgresql: bool, ids: str = "ids", *flag: Any) -> tuple[Any, Any]:
    """A claim's two parts: the UPDATE of the dispatches asked for that are waiting and due, and the SELECT of
    those already PROCESSING under this claim's token (its own earlier run, committed but unanswered: the
    statement is retried when its connection dies). In one PostgreSQL statement both read one snapshot, which
    predates the UPDATE, so no row is in both. `flag`: leading columns of the SELECT."""
    guard, target = transition_guard("claim", found_by_key=postgresql)
    now = _clock(postgresql)
    token = bindparam("token", type_=Uuid())
    if postgresql:
        pairs = _pairs("seq", ids)
        matching: tuple[Any, ...] = (_among(ids), jobs.c.id == pairs.c.id, jobs.c.dispatch_seq == pairs.c.seq)
        held_guard = status_in_rows_found_by_key({Status.PROCESSING})
    else:
        matching = (tuple_(jobs.c.id, jobs.c.dispatch_seq).in_(bindparam("dispatches", expanding=True)),)
        held_guard = status_in({Status.PROCESSING})
    claiming = (
        update(jobs)
        .where(*matching, guard, jobs.c.next_attempt_at <= bindparam("due_by", type_=UTCDateTime()))
        .values(
            status=target,
            attempts=jobs.c.attempts + 1,
            claimed_at=now,
            claim_token=token,
            worker=bindparam("worker"),
            updated_at=now,
            last_outcome=None,
            deferred_since=None,
            deferred_reason=None,
        )
        .returning(*_CLAIMED_COLUMNS)
    )
    held = select(*flag, *_CLAIMED_COLUMNS).where(*matching, held_guard, jobs.c.claim_token == token)
    return claiming, held


def _build_driver_claim() -> Any:
    claiming, held = _build_claim(postgresql=True)
    claimed = claiming.cte("claimed")
    return select(*claimed.c).union_all(held)


# The worker's statements are built once: constructing a SQLAlchemy statement per call costs more CPU
# than the round trip it makes.
_CLAIM, _HELD = _build_claim(postgresql=False)
_DRIVER_CLAIM = DriverStatement(_build_driver_claim())


def claim_many(
    conn: Connection,
    dispatches: list[tuple[uuid.UUID, int]],
    *,
    now: datetime,
    worker: str,
    token: uuid.UUID | None = None,
    database_clock: bool = False,
) -> list[ClaimedJob | None]:
    """Claim each `(job_id, seq)`: PENDING/RETRY and due, and `seq` its current dispatch → PROCESSING,
    attempts + 1. One statement for all; the answers follow the order asked, and of two requests for
    the same dispatch only the first gets the claim.

    `now` (the caller's clock) says what is due; it is also the claim's time, unless `database_clock` asks for
    the database's, by which the reconciler expires claims (workers: their hosts' clocks may be skewed). `token`
    names this claim: drawn once outside `Database.run`, it lets a retry of the statement after a commit whose
    answer was lost return the claims it made (attempts counted once) instead of dropping them as taken."""
    token = uuid.uuid4() if token is None else token
    driver = postgres(conn)
    params = {
        "now": _stamp(now, database_clock, driver is not None),
        "due_by": now + EARLY_CLAIM_TOLERANCE,
        "worker": worker,
        "token": token,
    }
    if driver is None:
        rows = conn.execute(_HELD, {"dispatches": dispatches, "token": token}).all()
        rows += conn.execute(_CLAIM, {**params, "dispatches": dispatches}).all()
    else:
        params.update(
            ids=array_literal(job_id for job_id, _ in dispatches), seqs=array_literal(seq for _, seq in dispatches)
        )
        rows = _DRIVER_CLAIM.execute(driver, params).fetchall()
    claimed = {row[0]: ClaimedJob(*row) for row in rows}
    return [claimed.pop(job_id, None) for job_id, _ in dispatches]


def claim(conn: Connection, job_id: uuid.UUID, seq: int, *, now: datetime, worker: str) -> ClaimedJob | None:
    """Claim one dispatch; see `claim_many`."""
    return claim_many(conn, [(job_id, seq)], now=now, worker=worker)[0]


def _build_succeed(postgresql: bool, ids: str = "ids") -> Any:
    guard, target = transition_guard("succeed", found_by_key=postgresql)
    now = _clock(postgresql)
    if postgresql:
        pairs = _pairs("attempt", ids)
        matching = (_among(ids), jobs.c.id == pairs.c.id, jobs.c.attempts == pairs.c.attempt)
    else:
        matching = (tuple_(jobs.c.id, jobs.c.attempts).in_(bindparam("held", expanding=True)),)
    return (
        update(jobs)
        .where(*matching, guard)
        .values(
            status=target,
            last_outcome=Outcome.SUCCESS.value,
            last_error=None,
            updated_at=now,
            completed_at=now,
            claimed_at=None,
        )
        .returning(jobs.c.id, jobs.c.callback_url, *_FINISHED_COLUMNS)
    )


def _build_succeed_and_claim(with_deliveries: bool = False) -> Any:
    """Both batches in one PostgreSQL statement (one commit): the claimed rows (made now, or held under the token),
    then the ids that succeeded with the job's columns NULL, but for a job with a status callback its URL and
    `_FINISHED_COLUMNS` (the last columns, NULL in the claims' rows). No row can be in both, since one guard wants
    PROCESSING and the other does not. `with_deliveries`: status callbacks' deliveries too (`_build_deliver`)."""
    flag = Boolean()
    succeeded = _build_succeed(postgresql=True, ids="success_ids").cte("succeeded")
    claiming, held = _build_claim(True, "claim_ids", literal(True, flag))
    claimed = claiming.cte("claimed")
    # Typed: a NULL of no type in a union of three is resolved as text, which a timestamp then does not match.
    unfinished = [cast(null(), c.type) for c in _FINISHED_COLUMNS]
    blank = [null() for _ in range(len(claimed.c) - 2)]
    callback_url = succeeded.c.callback_url
    parts = [
        held.add_columns(*unfinished),
        select(literal(False, flag), succeeded.c.id, *blank, null(), *unfinished).where(callback_url.is_(None)),
        select(literal(False, flag), succeeded.c.id, *blank, callback_url,
               *(succeeded.c[c.name] for c in _FINISHED_COLUMNS)).where(callback_url.is_not(None)),
    ]  # fmt: skip
    if with_deliveries:  # the status callbacks' deliveries, flagged NULL
        delivered = _build_deliver(postgresql=True).cte("delivered")
        parts.append(select(cast(null(), flag), delivered.c.job_id, *blank, null(), *unfinished))
    return select(literal(True, flag).label("claimed"), *claimed.c, *unfinished).union_all(*parts)


def _build_deliver(postgresql: bool) -> Any:
    """Status callbacks delivered: `ledger.callbacks`' "succeed" transition, stamped by the jobs' clock and its
    parameters named apart from theirs, so that it rides the jobs' statement of the same batch: one statement and one
    commit for both."""
    return callbacks.build_succeed(postgresql, now=_clock(postgresql), prefix=_DELIVERED)


_SUCCEED = _build_succeed(postgresql=False)
_DRIVER_SUCCEED = DriverStatement(_build_succeed(postgresql=True))
_DRIVER_SUCCEED_AND_CLAIM = DriverStatement(_build_succeed_and_claim())
_DRIVER_SUCCEED_CLAIM_AND_DELIVER = DriverStatement(_build_succeed_and_claim(with_deliveries=True))
_DELIVER, _DRIVER_DELIVER = _build_deliver(postgresql=False), DriverStatement(_build_deliver(postgresql=True))


def succeed_many(
    conn: Connection, attempts: list[tuple[uuid.UUID, int]], *, now: datetime, database_clock: bool = False
) -> list[bool]:
    """Each `(job_id, attempt)` still PROCESSING at that attempt → SUCCESS, in one statement; which took.
    `database_clock`: stamped with the database's clock rather than `now`."""
    done = _succeed_many(conn, attempts, now=now, database_clock=database_clock)
    return [job_id in done for job_id, _ in attempts]


def _succeed_many(
    conn: Connection, attempts: list[tuple[uuid.UUID, int]], *, now: datetime, database_clock: bool
) -> dict[uuid.UUID, Finished | None]:
    """The jobs that succeeded, each with its `Finished` when it has a status callback."""
    driver = postgres(conn)
    now = _stamp(now, database_clock, driver is not None)
    if driver is None:
        rows = conn.execute(_SUCCEED, {"held": attempts, "now": now}).all()
    else:
        params = {
            "now": now,
            "ids": array_literal(job_id for job_id, _ in attempts),
            "attempts": array_literal(n for _, n in attempts),
        }
        rows = _DRIVER_SUCCEED.execute(driver, params).fetchall()
    return {row[0]: None if row[1] is None else Finished(*row[2:]) for row in rows}


def succeed_and_claim(
    conn: Connection,
    attempts: list[tuple[uuid.UUID, int]],
    dispatches: list[tuple[uuid.UUID, int]],
    *,
    now: datetime,
    worker: str,
    token: uuid.UUID | None = None,
    database_clock: bool = False,
    finished: dict[uuid.UUID, Finished] | None = None,
    delivered: Sequence[tuple[uuid.UUID, int]] = (),
    recorded: set[uuid.UUID] | None = None,
) -> tuple[list[bool], list[ClaimedJob | None]]:
    """`succeed_many(attempts)` and `claim_many(dispatches)` with the same options; on PostgreSQL in one
    statement, so a worker's claims and outcomes share a commit. `finished` receives the `Finished` of each job
    that succeeded with a status callback, by id (cleared first: the statement may be run again). `delivered`:
    status callbacks `(job_id, attempt)` POSTed with success, recorded in the same statement (PROCESSING at that
    attempt → SUCCESS); `recorded` receives the ids of those that took (cleared first)."""
    finished = {} if finished is None else finished
    recorded = set() if recorded is None else recorded
    finished.clear()
    recorded.clear()
    driver = postgres(conn)
    # One statement for any two of the three (a part with nothing to do costs it little); one alone goes alone.
    if driver is None or sum(map(bool, (attempts, dispatches, delivered))) < 2:
        options: dict[str, Any] = {"now": now, "database_clock": database_clock}
        succeeded = _succeed_many(conn, attempts, **options) if attempts else {}
        claimed = claim_many(conn, dispatches, worker=worker, token=token, **options) if dispatches else []
        finished.update((job_id, row) for job_id, row in succeeded.items() if row is not None)
        if delivered:
            recorded.update(_deliver(conn, delivered, **options))
        return [job_id in succeeded for job_id, _ in attempts], claimed
    params = {
        "now": _stamp(now, database_clock, postgresql=True),
        "due_by": now + EARLY_CLAIM_TOLERANCE,
        "worker": worker,
        "token": uuid.uuid4() if token is None else token,
        "success_ids": array_literal(job_id for job_id, _ in attempts),
        "attempts": array_literal(n for _, n in attempts),
        "claim_ids": array_literal(job_id for job_id, _ in dispatches),
        "seqs": array_literal(seq for _, seq in dispatches),
    }
    statement = _DRIVER_SUCCEED_AND_CLAIM
    if delivered:
        statement = _DRIVER_SUCCEED_CLAIM_AND_DELIVER
        params.update(_delivered_params(delivered))
    claimed: dict[uuid.UUID, ClaimedJob] = {}
    succeeded: set[uuid.UUID] = set()
    width = len(_CLAIMED_COLUMNS) + 1
    for row in statement.execute(driver, params).fetchall():
        if row[0]:
            claimed[row[1]] = ClaimedJob(*row[1:width])
        elif row[0] is None:
            recorded.add(row[1])
        else:
            succeeded.add(row[1])
            if row[width - 1] is not None:
                finished[row[1]] = Finished(*row[width:])
    return [job_id in succeeded for job_id, _ in attempts], [claimed.pop(job_id, None) for job_id, _ in dispatches]


def _delivered_params(delivered: Sequence[tuple[uuid.UUID, int]]) -> dict[str, str]:
    return {f"{_DELIVERED}attempt_ids": array_literal(job_id for job_id, _ in delivered),
            f"{_DELIVERED}attempts": array_literal(n for _, n in delivered)}  # fmt: skip


def _deliver(
    conn: Connection, delivered: Sequence[tuple[uuid.UUID, int]], *, now: datetime, database_clock: bool
) -> set[uuid.UUID]:
    """`_build_deliver` alone (no job in the batch, or SQLite): the ids of the callbacks whose delivery took."""
    driver = postgres(conn)
    stamp = _stamp(now, database_clock, driver is not None)
    if driver is None:
        return {row[0] for row in conn.execute(_DELIVER, {f"{_DELIVERED}held": delivered, "now": stamp})}
    return {row[0] for row in _DRIVER_DELIVER.execute(driver, {"now": stamp, **_delivered_params(delivered)})}


def succeed(conn: Connection, job_id: uuid.UUID, attempt: int, *, now: datetime) -> bool:
    """PROCESSING at `attempt` → SUCCESS."""
    return succeed_many(conn, [(job_id, attempt)], now=now)[0]
