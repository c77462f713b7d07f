"""The statements that insert a batch of new jobs, their rows sent as one JSON parameter, and that parameter."""

from __future__ import annotations

import operator
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import JSON, String, Text, bindparam, column, func, literal, literal_column, select, true
from sqlalchemy.dialects import postgresql

from ledger.database import DriverStatement
from ledger.schema import jobs
from ledger.states import Status

if TYPE_CHECKING:
    from ledger.intake import Accepting


# A batch of rows travels as one JSON array: one statement text (prepared once) for every batch size, and one
# parameter to encode (C-accelerated), where an array per column cost more client CPU than the round trip. Each row
# holds only what is its own: what the batch shares (its scope, its instant) is a parameter of the statement, a NULL
# is left out, and what follows from other columns is worked out in SQL, so PostgreSQL reads less per row
# (bench/README.md, 2026-12-04 07:08).
class _SentRow(msgspec.Struct, omit_defaults=True, gc=False):
    """A new job's row as a batch sends it; a field at its default is not sent, and the statement reads it back as
    NULL (`_batch_rows`)."""

    id: uuid.UUID
    idempotency_key: str
    payload_hash: str
    recipient: str
    channel: str
    message: str
    max_attempts: int
    subject: str | None = None
    metadata: dict[str, Any] | None = None
    send_at: datetime | None = None
    #: None: 1, dispatched at once.
    dispatch_seq: int | None = None
    #: None: the channel's name.
    destination: str | None = None
    callback_url: str | None = None
    callback_destination: str | None = None
    #: None: the batch's (`scope` and `now` of the statement).
    scope: str | None = None
    created_at: datetime | None = None


#: The order rows are inserted in, the same in every statement that inserts several: two statements inserting the
#: same keys then take their locks in the same order, and neither can wait for the other's next key while holding one
#: it needs (a deadlock). Python orders strings by code point, as PostgreSQL's "C" collation orders their UTF-8.
_KEY = ("scope", "idempotency_key")
_BY_KEY = operator.attrgetter("request.idempotency_key")
_BY_SCOPE = operator.attrgetter("request.scope")


def _batch_rows() -> Any:
    """The rows of the `rows` parameter (`_SentRow`s) as the jobs they make."""
    # Text, not VARCHAR(n): a cast to VARCHAR(n) would cut a long value short where the INSERT must refuse it.
    fields = _SentRow.__struct_fields__
    types = {name: Text() if isinstance(jobs.c[name].type, String) else jobs.c[name].type for name in fields}
    sent = (
        func.json_to_recordset(bindparam("rows", type_=JSON()))
        .table_valued(*(column(name, types[name]) for name in fields))
        .render_derived(name="sent", with_types=True)
    )
    now = bindparam("now", type_=jobs.c.created_at.type)
    created_at = func.coalesce(sent.c.created_at, now)
    scope = func.coalesce(sent.c.scope, bindparam("scope", type_=Text()))
    return select(
        sent.c.id,
        scope.label("scope"),
        *(sent.c[name] for name in ("idempotency_key", "payload_hash", "recipient", "channel", "message", "subject")),
        sent.c.metadata,
        sent.c.send_at,
        sent.c.max_attempts,
        # GREATEST passes NULLs over: due when created, or at its send_at if that is later.
        func.greatest(sent.c.send_at, created_at).label("next_attempt_at"),
        func.coalesce(sent.c.dispatch_seq, 1).label("dispatch_seq"),
        created_at.label("created_at"),
        func.coalesce(sent.c.destination, sent.c.channel).label("destination"),
        sent.c.callback_url,
        sent.c.callback_destination,
        literal(Status.PENDING.value).label("status"),
        literal(0).label("attempts"),
        created_at.label("updated_at"),
    )


def _build_free_keys() -> Any:
    """Every row of the batch whose key is free; it answers with the ids of the others (see below)."""
    # Parsed once for both uses below: parsing the JSON was a quarter of PostgreSQL's CPU per row when each use
    # parsed it again (bench/README.md, 2026-12-03 20:07).
    batch = _batch_rows().cte("batch").prefix_with("MATERIALIZED")
    inserted = (
        postgresql.insert(jobs)
        # The order they are sent in, made sure of (as the rows come sorted, a cheap sort): see `parameters`.
        .from_select([c.name for c in batch.c], select(batch).order_by(*(batch.c[name].collate("C") for name in _KEY)))
        .on_conflict_do_nothing(index_elements=["scope", "idempotency_key"])
        .returning(jobs.c.id)
        .cte("inserted")
    )
    # The statement answers with the rows whose key someone else holds: those the INSERT skipped (a hashed NOT IN on
    # what it inserted) that do not exist under their own ids, i.e. were not written by this statement's earlier
    # run, committed but unanswered (it is retried when its connection dies). Read in the snapshot that predates the
    # INSERT. Nothing comes back for a batch of new keys: reading back an id per row cost more client CPU than it.
    # One primary-key probe per skipped row, whatever the statistics: as a plain join, the generic plan made on a new
    # or just-truncated `jobs` hashed the whole table for every group (bench/README.md, 2026-12-03 17:20). A LIMIT
    # keeps the lateral subquery from being flattened into a join, so its only plan is the probe.
    found = select(jobs.c.id).where(jobs.c.id == batch.c.id).limit(literal_column("1")).lateral("found")
    skipped = batch.c.id.not_in(select(inserted.c.id).scalar_subquery())
    return select(batch.c.id).select_from(batch.outerjoin(found, true())).where(skipped, found.c.id.is_(None))


#: The rows whose key is free; answers with the ids of those whose key another job holds.
INSERT_FREE_KEYS = DriverStatement(_build_free_keys())
#: msgspec writes the rows' ids, times and metadata as JSON in a twentieth of json.dumps's time (bench/README.md).
_ROWS = msgspec.json.Encoder()


def _sent_row(item: Accepting, scope: str, now: datetime) -> _SentRow:
    request = item.request
    destination = request.destination
    return _SentRow(
        item.job_id, request.idempotency_key, request.payload_hash(), request.recipient, request.channel,
        request.message, request.max_attempts, request.subject, request.metadata, request.send_at,
        None if item.dispatch_now else 0, destination if destination and destination != request.channel else None,
        request.callback_url, request.callback_destination, None if request.scope == scope else request.scope,
        None if item.now == now else item.now,
    )  # fmt: skip


def parameters(batch: list[Accepting]) -> dict[str, Any]:
    """The parameters of the batch statements for `batch` (not empty): its rows in key order (`_KEY`), and what most
    of them share."""
    # Sorted here rather than by the statement: PostgreSQL's sort of the rows cost it 8 % of its CPU per row
    # (bench/README.md, 2026-12-04 13:40). By key, then (stable) by scope: a batch has one scope, and a key alone
    # sorts in a third of the time of a (scope, key) tuple.
    batch = sorted(sorted(batch, key=_BY_KEY), key=_BY_SCOPE)
    scope, now = batch[0].request.scope, batch[0].now
    rows = _ROWS.encode([_sent_row(item, scope, now) for item in batch]).decode()
    return {"rows": rows, "scope": scope, "now": now}
