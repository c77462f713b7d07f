"""Exactly-once intake: one INSERT … ON CONFLICT per request; a replay is a normal result."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from psycopg.types.json import Json
from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite

from ledger.database import DriverStatement, postgres
from ledger.errors import LedgerError
from ledger.ids import uuid7
from ledger.schema import jobs
from ledger.states import Status


@dataclass(frozen=True)
class NewNotification:
    """A producer's request, already validated by the API."""

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

    def payload_hash(self) -> str:
        """A digest of what makes two requests "the same": key order and time zones do not count."""
        canonical = {
            "recipient": self.recipient,
            "channel": self.channel,
            "message": self.message,
            "subject": self.subject,
            "metadata": self.metadata,
            "send_at": self.send_at.astimezone(UTC).isoformat() if self.send_at else None,
        }
        encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(encoded.encode()).hexdigest()


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


@dataclass(frozen=True)
class IntakeResult:
    outcome: Intake
    job_id: uuid.UUID
    status: Status
    created_at: datetime
    #: The dispatch to send now (CREATED only); 0 means "not yet: the reconciler sends it when due".
    dispatch_seq: int = 0
    next_attempt_at: datetime | None = None


def accept(conn: Connection, request: NewNotification, *, now: datetime, dispatch_now: bool) -> IntakeResult:
    """Record `request` unless its idempotency key is known; say which of the three cases happened.

    Concurrent requests with one key race on the unique constraint: exactly one INSERT wins and
    the others wait for it, find its row and answer as replays (or mismatches).
    """
    due = max(now, request.send_at) if request.send_at else now
    job_id = uuid7()
    dispatch_seq = 1 if dispatch_now else 0
    digest = request.payload_hash()
    values = {
        "id": job_id,
        "scope": request.scope,
        "idempotency_key": request.idempotency_key,
        "payload_hash": digest,
        "recipient": request.recipient,
        "channel": request.channel,
        "message": request.message,
        "subject": request.subject,
        "metadata": request.metadata,
        "send_at": request.send_at,
        "status": Status.PENDING,
        "attempts": 0,
        "max_attempts": request.max_attempts,
        "next_attempt_at": due,
        "dispatch_seq": dispatch_seq,
        "created_at": now,
        "updated_at": now,
    }
    # Twice at most: the row that made our INSERT conflict may be pruned before we read it (its key is
    # forgotten, so this request is new after all); the second INSERT then succeeds or meets a newer row.
    for _ in range(2):
        if _insert(conn, values):
            return IntakeResult(Intake.CREATED, job_id, Status.PENDING, now, dispatch_seq, due)
        existing = conn.execute(
            select(jobs.c.id, jobs.c.payload_hash, jobs.c.status, jobs.c.created_at).where(
                jobs.c.scope == request.scope, jobs.c.idempotency_key == request.idempotency_key
            )
        ).first()
        if existing is not None:
            break
    else:
        raise LedgerError(f"idempotency key {request.idempotency_key!r} is being written and pruned at once")
    outcome = Intake.REPLAYED if existing.payload_hash == digest else Intake.MISMATCH
    return IntakeResult(outcome, existing.id, Status(existing.status), existing.created_at)
