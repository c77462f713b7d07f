"""Exactly-once intake: one INSERT … ON CONFLICT per request; a replay is a normal result."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import msgspec
from psycopg.types.json import Json
from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite

from ledger import batch_insert
from ledger.database import DriverStatement, postgres
from ledger.errors import LedgerError
from ledger.ids import uuid7
from ledger.schema import jobs
from ledger.states import Status


class NewNotification(msgspec.Struct, frozen=True, gc=False):
    """A producer's request, already validated by the API.

    These per-request types are msgspec Structs, not frozen dataclasses: one is built in a fifteenth of the time
    (0.24 µs, not 3.6), which a batch pays per item several times over; and none is tracked by the garbage
    collector (`gc=False`: they hold no cycle), whose passes over a batch's live objects cost as much again
    (bench/README.md, 2026-12-03 20:07)."""

    idempotency_key: str
    recipient: str
    channel: str
    message: str
    max_attempts: int
    subject: str | None = None
    metadata: dict[str, Any] | None = None
    send_at: datetime | None = None
    #: The API key that sent it ('' when no producer keys exist).
    scope: str = ""
    #: The party it is delivered to, as its channel names it (`Channel.destination`); the channel's name when not
    #: given. Not part of the payload: it follows from the recipient and the API's settings.
    destination: str = ""
    #: Where the job's status callback goes when it finishes, and that URL's destination (None: no callback). Not
    #: part of the compared payload (SPEC lists what is).
    callback_url: str | None = None
    callback_destination: str | None = None

    def payload_hash(self) -> str:
        """A digest of what makes two requests "the same": key order and time zones do not count.

        The digest of `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)` of the payload, which
        rows already in a ledger hold; msgspec writes those very bytes in a sixth of the time, except for floats
        (`1e+16` where msgspec writes `1e16`), so metadata holding one takes the slow road."""
        send_at = self.send_at.astimezone(UTC).isoformat() if self.send_at else None
        if self.metadata is not None and _holds_float(self.metadata):
            canonical = {
                "recipient": self.recipient, "channel": self.channel, "message": self.message,
                "subject": self.subject, "metadata": self.metadata, "send_at": send_at,
            }  # fmt: skip
            encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        else:
            payload = _Payload(self.channel, self.message, self.metadata, self.recipient, send_at, self.subject)
            encoded = _CANONICAL.encode(payload)
        return hashlib.sha256(encoded).hexdigest()


class _Payload(msgspec.Struct):
    """The compared payload, its fields in the sorted order `json.dumps(sort_keys=True)` writes them."""

    channel: str
    message: str
    metadata: dict[str, Any] | None
    recipient: str
    send_at: str | None
    subject: str | None


#: Sorts the keys of metadata at every depth, as `sort_keys=True` does (by code point).
_CANONICAL = msgspec.json.Encoder(order="sorted")


def _holds_float(value: object) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_holds_float(item) for item in value.values())
    if isinstance(value, list):
        return any(_holds_float(item) for item in value)
    return False


# Built once per dialect: the columns come with the parameters, so one statement serves every request.
_INSERT = {
    dialect.dialect.name: dialect.insert(jobs)
    .on_conflict_do_nothing(index_elements=["scope", "idempotency_key"])
    .returning(jobs.c.id)
    for dialect in (postgresql, sqlite)
}
_COLUMNS = (
    "id", "scope", "idempotency_key", "payload_hash", "recipient", "channel", "message", "subject", "metadata",
    "send_at", "status", "attempts", "max_attempts", "next_attempt_at", "dispatch_seq", "created_at", "updated_at",
    "destination", "callback_url", "callback_destination",
)  # fmt: skip
_DRIVER_INSERT = DriverStatement(_INSERT["postgresql"], column_keys=_COLUMNS)


class Intake(StrEnum):
    CREATED = "created"
    REPLAYED = "replayed"
    MISMATCH = "mismatch"


def _insert(conn: Connection, values: dict[str, Any]) -> bool:
    """INSERT unless the key is taken; whether it did."""
    driver = postgres(conn)
    if driver is None:
        return conn.execute(_INSERT[conn.dialect.name], values).first() is not None
    metadata = values["metadata"]
    values = {**values, "status": values["status"].value, "metadata": None if metadata is None else Json(metadata)}
    return _DRIVER_INSERT.execute(driver, values).fetchone() is not None


class IntakeResult(msgspec.Struct, frozen=True, gc=False):
    outcome: Intake
    job_id: uuid.UUID
    status: Status
    created_at: datetime
    #: The dispatch to send now (CREATED only); 0 means "not yet: the reconciler sends it when due".
    dispatch_seq: int = 0
    next_attempt_at: datetime | None = None
    #: The job's destination (CREATED only), which its message carries.
    destination: str = ""


class Accepting(msgspec.Struct, frozen=True, gc=False):
    """A request on its way into the ledger, with the instant the API took for it."""

    request: NewNotification
    now: datetime
    #: Dispatch at once (its message is sent now), or leave it to the reconciler until it falls due.
    dispatch_now: bool
    #: The id its job gets, drawn once when the request arrives: an INSERT retried after a commit whose answer
    #: was lost with the connection meets a row of this id, and knows it for its own.
    job_id: uuid.UUID = msgspec.field(default_factory=uuid7)

    def row(self) -> dict[str, Any]:
        """Its job's row as a single INSERT writes it (a batch sends less: `ledger.batch_insert`)."""
        request, created = self.request, _created(self)
        return {
            "id": self.job_id, "scope": request.scope, "idempotency_key": request.idempotency_key,
            "payload_hash": request.payload_hash(), "recipient": request.recipient, "channel": request.channel,
            "message": request.message, "subject": request.subject, "metadata": request.metadata,
            "send_at": request.send_at, "status": Status.PENDING, "attempts": 0, "max_attempts": request.max_attempts,
            "next_attempt_at": created.next_attempt_at, "dispatch_seq": created.dispatch_seq, "created_at": self.now,
            "updated_at": self.now, "destination": created.destination, "callback_url": request.callback_url,
            "callback_destination": request.callback_destination,
        }  # fmt: skip


def _created(item: Accepting) -> IntakeResult:
    """The result of the job `item` created, worked out from the request as its row's columns are."""
    request, now = item.request, item.now
    return IntakeResult(
        Intake.CREATED, item.job_id, Status.PENDING, now, 1 if item.dispatch_now else 0,
        max(now, request.send_at) if request.send_at else now, request.destination or request.channel,
    )  # fmt: skip


def accept(
    conn: Connection, request: NewNotification, *, now: datetime, dispatch_now: bool, job_id: uuid.UUID | None = None
) -> IntakeResult:
    """Record `request` unless its idempotency key is known; say which of the three cases happened.

    Concurrent requests with one key race on the unique constraint: exactly one INSERT wins and
    the others wait for it, find its row and answer as replays (or mismatches). `job_id`: the id drawn when the
    request arrived (`Accepting`); a retry of this call that finds its key taken by that very id created it.
    """
    accepting = Accepting(request, now, dispatch_now, uuid7() if job_id is None else job_id)
    values = accepting.row()
    digest = values["payload_hash"]
    # Twice at most: the row that made our INSERT conflict may be pruned before we read it (its key is
    # forgotten, so this request is new after all); the second INSERT then succeeds or meets a newer row.
    for _ in range(2):
        if _insert(conn, values):
            return _created(accepting)
        existing = conn.execute(
            select(jobs.c.id, jobs.c.payload_hash, jobs.c.status, jobs.c.created_at).where(
                jobs.c.scope == request.scope, jobs.c.idempotency_key == request.idempotency_key
            )
        ).first()
        if existing is not None:
            break
    else:
        raise LedgerError(f"idempotency key {request.idempotency_key!r} is being written and pruned at once")
    if existing.id == accepting.job_id:
        return _created(accepting)
    outcome = Intake.REPLAYED if existing.payload_hash == digest else Intake.MISMATCH
    return IntakeResult(outcome, existing.id, Status(existing.status), existing.created_at)


def accept_many(conn: Connection, batch: list[Accepting]) -> list[IntakeResult | None]:
    """Record every request of `batch` whose idempotency key is new, in one statement: its result, in order,
    or None for a request whose key was taken (by an earlier row or by one before it in `batch`), which
    `accept` then answers as a replay or a mismatch. A request whose row (by its `job_id`) is there already
    was created by this statement's earlier run, and is answered as created. On SQLite each request is simply
    accepted in turn."""
    driver = postgres(conn)
    if driver is None:
        return [
            accept(conn, item.request, now=item.now, dispatch_now=item.dispatch_now, job_id=item.job_id)
            for item in batch
        ]
    if not batch:
        return []
    taken = {job_id for (job_id,) in batch_insert.INSERT_FREE_KEYS.execute(driver, batch_insert.parameters(batch))}
    if not taken:
        return [_created(item) for item in batch]
    return [None if item.job_id in taken else _created(item) for item in batch]


def accept_batch(conn: Connection, batch: list[Accepting]) -> list[IntakeResult]:
    """Accept one producer's requests (one scope) as if they had come one after the other, in a few statements
    whatever their number: every new key in one (`accept_many`), the keys recorded before in one more, and a key
    the batch repeats answered against what its first occurrence recorded or met."""
    firsts: dict[str, int] = {}
    for index, item in enumerate(batch):
        firsts.setdefault(item.request.idempotency_key, index)
    results: list[IntakeResult | None] = [None] * len(batch)
    new = [batch[i] for i in firsts.values()] if len(firsts) < len(batch) else batch
    answered = accept_many(conn, new)
    if new is batch and all(result is not None and result.outcome is Intake.CREATED for result in answered):
        return answered  # type: ignore[return-value]  # every key new and free: the common batch, as answered
    for index, result in zip(firsts.values(), answered, strict=True):
        # On SQLite `accept_many` answers taken keys too, but only the recorded row tells what later ones compare to.
        results[index] = result if result is not None and result.outcome is Intake.CREATED else None
    taken = [key for key, index in firsts.items() if results[index] is None]
    rows = _recorded(conn, batch[0].request.scope, taken) if taken else {}
    # Per key, the job its later occurrences are compared with and its payload's digest (None: the first
    # occurrence's, computed only if a later one needs it); a key missing here: ask the ledger.
    references: dict[str, tuple[IntakeResult, str | None]] = {}
    for key, index in firsts.items():
        item, result = batch[index], results[index]
        if result is not None:
            references[key] = (result, None)
        elif key in rows:
            references[key] = rows[key]
            results[index] = _compared(rows[key], item.request.payload_hash())
        else:
            # Pruned between the two statements: the key is new again, and the ledger alone knows what it now holds.
            results[index] = _accept_alone(conn, item)
    for index, item in enumerate(batch):
        if results[index] is not None:
            continue
        key = item.request.idempotency_key
        if key not in references:
            results[index] = _accept_alone(conn, item)
            continue
        recorded, digest = references[key]
        if digest is None:
            digest = batch[firsts[key]].request.payload_hash()
            references[key] = (recorded, digest)
        results[index] = _compared((recorded, digest), item.request.payload_hash())
    done = [result for result in results if result is not None]
    assert len(done) == len(batch)
    return done


def _accept_alone(conn: Connection, item: Accepting) -> IntakeResult:
    return accept(conn, item.request, now=item.now, dispatch_now=item.dispatch_now, job_id=item.job_id)


def _compared(reference: tuple[IntakeResult, str], digest: str) -> IntakeResult:
    """A later request with a key already recorded: a replay of the recorded job when the payloads match."""
    recorded, recorded_digest = reference
    outcome = Intake.REPLAYED if recorded_digest == digest else Intake.MISMATCH
    return IntakeResult(outcome, recorded.job_id, recorded.status, recorded.created_at)


def _job_of(row: Any) -> IntakeResult:
    return IntakeResult(Intake.REPLAYED, row.id, Status(row.status), row.created_at)


def _recorded(conn: Connection, scope: str, keys: list[str]) -> dict[str, tuple[IntakeResult, str]]:
    """The jobs recorded under `keys` in `scope`, with their payloads' digests, in one statement."""
    found = conn.execute(
        select(jobs.c.idempotency_key, jobs.c.id, jobs.c.payload_hash, jobs.c.status, jobs.c.created_at).where(
            jobs.c.scope == scope, jobs.c.idempotency_key.in_(keys)
        )
    )
    return {row.idempotency_key: (_job_of(row), row.payload_hash) for row in found}
