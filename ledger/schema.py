"""The ledger's tables: jobs (the truth), one row per delivery attempt, and status counters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ColumnElement,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    literal_column,
    text,
)
from sqlalchemy.types import UserDefinedType

from ledger.states import FINISHED, Status
from ledger.timestamps import UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: The listing's indexes, by name: the columns between the scope and the keyset. No plain (scope, created_at, id)
#: index and no channel one: the status index, with the channel after the status, serves a walk with a status and a
#: channel as one range, and every other walk with no destination filter as one branch per status and channel,
#: merged (ledger/listing.py); each index fewer spares every new row and every status change an entry (migrations
#: 0011, 0012).
LISTING_INDEXES: dict[str, tuple[str, ...]] = {
    "ix_jobs_listing_status_channel": ("status", "channel"),
    "ix_jobs_listing_destination": ("destination",),
}


class TransactionId(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (`xid8`); only ever compared in SQL, never read."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


#: `jobs.created_xid`'s type: a plain integer on SQLite, where the column stays NULL.
CREATED_XID_TYPE = TransactionId().with_variant(BigInteger(), "sqlite")

#: Slots of the status counters. Each write transaction updates one slot (chosen by its
#: transaction id), so concurrent writers rarely wait on the same counter row.
COUNTER_SLOTS = 32

jobs = Table(
    "jobs",
    metadata,
    Column("id", Uuid, primary_key=True),
    # The API key that created the job ('' before any key exists); idempotency is per scope.
    Column("scope", String(64), nullable=False, server_default=""),
    Column("idempotency_key", String(255), nullable=False),
    Column("payload_hash", String(64), nullable=False),
    Column("recipient", Text, nullable=False),
    Column("channel", String(32), nullable=False),
    Column("message", Text, nullable=False),
    Column("subject", String(255)),
    Column("metadata", JSON),
    Column("send_at", UTCDateTime),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False),
    # When the job is due: created_at or send_at at intake, then the backoff's due time.
    Column("next_attempt_at", UTCDateTime, nullable=False),
    # Bumped at every dispatch; the Redis message id is "<id>.<dispatch_seq>", so a claim can
    # tell the job's current message from a stale copy, and the reconciler can look it up in O(1).
    Column("dispatch_seq", Integer, nullable=False, server_default="0"),
    Column("claimed_at", UTCDateTime),
    # Drawn once per claim statement by the worker that sends it, so that the statement, retried after a commit
    # whose answer was lost with the connection, finds its own claims instead of taking them for someone else's.
    Column("claim_token", Uuid),
    # The party the job is delivered to (`webhook:<host>:<port>`, `email:<relay>:<port>`, …), fixed at intake: the
    # unit of limits, throttling and circuit breaking.
    Column("destination", String(300), nullable=False, server_default=""),
    # Since when, and why, the job has waited on its destination without an attempt (cleared by a claim).
    Column("deferred_since", UTCDateTime),
    Column("deferred_reason", String(20)),
    # Attempts answered by throttling, which gave their attempt back (up to WJP_MAX_THROTTLES).
    Column("throttles", Integer, nullable=False, server_default="0"),
    Column("worker", String(200)),
    Column("last_outcome", String(20)),
    Column("last_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("completed_at", UTCDateTime),
    # Where the job's status callback goes when it finishes (SPEC "Status callbacks"), and that URL's destination.
    Column("callback_url", Text),
    Column("callback_destination", String(300)),
    # PostgreSQL: the transaction that created the row (its default, set by migration 0007, is
    # `pg_current_xact_id()`), which tells a listing walk whether the job was committed when the walk began
    # (ledger/listing.py); NULL on rows older than the column. SQLite leaves it NULL: there, the rowid tells.
    Column("created_xid", CREATED_XID_TYPE),
    UniqueConstraint("scope", "idempotency_key"),
    # Partial indexes hold only the few live rows, so the reconciler's and the stats' queries
    # cost what the candidates cost, not what the whole ledger costs.
    Index(
        "ix_jobs_processing_claimed_at",
        "claimed_at",
        postgresql_where=text("status = 'PROCESSING'"),
        sqlite_where=text("status = 'PROCESSING'"),
    ),
    Index(
        "ix_jobs_waiting_next_attempt_at",
        "next_attempt_at",
        "status",
        postgresql_where=text("status IN ('PENDING', 'RETRY')"),
        sqlite_where=text("status IN ('PENDING', 'RETRY')"),
    ),
    Index(
        "ix_jobs_finished_completed_at",
        "completed_at",
        postgresql_where=text("completed_at IS NOT NULL"),
        sqlite_where=text("completed_at IS NOT NULL"),
    ),
    Index(
        "ix_jobs_waiting_destination",
        "destination",
        "next_attempt_at",
        postgresql_where=text("status IN ('PENDING', 'RETRY')"),
        sqlite_where=text("status IN ('PENDING', 'RETRY')"),
    ),
    Index(
        "ix_jobs_deferred_since",
        "deferred_since",
        postgresql_where=text("deferred_since IS NOT NULL AND status IN ('PENDING', 'RETRY')"),
        sqlite_where=text("deferred_since IS NOT NULL AND status IN ('PENDING', 'RETRY')"),
    ),
    # Failures are few: operators' views of recent failures and bulk retries read them without
    # walking past the successes.
    Index(
        "ix_jobs_failed_completed_at",
        "completed_at",
        postgresql_where=text("status = 'FAILED'"),
        sqlite_where=text("status = 'FAILED'"),
    ),
    # The listing (ledger/listing.py): a producer's jobs newest first, with or without each filter; the keyset
    # (created_at, id) last, so that each walks a page in order from the cursor down. With the id in
    # them no two entries are equal: PostgreSQL's deduplication, tried on every full page, could never merge any
    # and is off (migrations 0011 and 0012, bench/README.md 2026-12-04 07:08).
    *(
        Index(name, "scope", *columns, "created_at", "id", postgresql_with={"deduplicate_items": "off"})
        for name, columns in LISTING_INDEXES.items()
    ),
)

# Written by a trigger on `jobs` (see migrations) when a job leaves PROCESSING: one row per finished
# attempt, with the outcome and error the transition wrote on the job. The running attempt is the job row.
attempts = Table(
    "attempts",
    metadata,
    Column("job_id", Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("outcome", String(20)),
    Column("error", Text),
    Column("worker", String(200)),
)

# Maintained by triggers on `jobs` for the finished statuses (the bulk of a ledger); the sum over slots
# equals `SELECT count(*)` of each. Live statuses are counted from their partial indexes instead.
job_counts = Table(
    "job_counts",
    metadata,
    Column("slot", Integer, primary_key=True, autoincrement=False),
    *(Column(status.lower(), BigInteger, nullable=False, server_default="0") for status in sorted(FINISHED)),
    Column("success_attempts", BigInteger, nullable=False, server_default="0"),
)

# The status callback of a job that has a `callback_url`: armed by a trigger on `jobs` (migration 0006) in the very
# transaction that finishes the job, then delivered like a webhook with attempts of its own. One row per job: a later
# finish (after a manual retry) re-arms it for the new status, and its dispatch seq fences the older messages.
callbacks = Table(
    "callbacks",
    metadata,
    Column("job_id", Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    #: The job's status the callback reports: SUCCESS, FAILED or CANCELLED.
    Column("event", String(16), nullable=False),
    #: The callback's own delivery status (`ledger.callbacks.TRANSITIONS`).
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    # As `jobs.dispatch_seq`: 0 never sent, negative parked (no message may claim), positive the current message.
    Column("dispatch_seq", Integer, nullable=False, server_default="0"),
    Column("claimed_at", UTCDateTime),
    Column("destination", String(300), nullable=False),
    Column("last_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index(
        "ix_callbacks_waiting_next_attempt_at",
        "next_attempt_at",
        postgresql_where=text("status IN ('PENDING', 'RETRY')"),
        sqlite_where=text("status IN ('PENDING', 'RETRY')"),
    ),
    Index(
        "ix_callbacks_processing_claimed_at",
        "claimed_at",
        postgresql_where=text("status = 'PROCESSING'"),
        sqlite_where=text("status = 'PROCESSING'"),
    ),
)

# Operators' limits per destination; a destination without a row, or a NULL, takes the workers' defaults.
destinations = Table(
    "destinations",
    metadata,
    Column("key", String(300), primary_key=True),
    Column("concurrency", Integer),
    Column("rate", Float),
    Column("updated_at", UTCDateTime, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
    #: Notifications per second this key may submit; NULL: the API's default (WJP_API_KEY_RATE).
    Column("rate", Float),
)


def status_in(statuses: Iterable[Status]) -> ColumnElement[bool]:
    """`jobs.status IN ('A', 'B')` with literal values: only a literal predicate lets the PostgreSQL and
    SQLite planners use the partial indexes above (a bound parameter would hide the value)."""
    values = [literal_column(f"'{Status(s).value}'") for s in sorted(statuses)]
    # One status renders as "=": SQLite matches an index's predicate literally, and that one says "=".
    return jobs.c.status == values[0] if len(values) == 1 else jobs.c.status.in_(values)


def status_in_rows_found_by_key(statuses: Iterable[Status]) -> ColumnElement[bool]:
    """The test of `status_in`, written so that no partial index's predicate matches it, for statements that
    find their rows through the primary key: a planner whose statistics predate a backlog thinks the partial
    indexes small and reads them whole, dead entries included, instead of the few rows asked for (seen in
    `make bench` drains: thousands of index entries read per job, bench/README.md)."""
    values = [literal_column(f"'{Status(s).value}'") for s in sorted(statuses)]
    return jobs.c.status.concat(literal_column("''")).in_(values)
