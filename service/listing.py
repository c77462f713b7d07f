"""GET /api/notifications over HTTP: the query's filters, the opaque cursor that carries a walk, and the page.

A cursor is base64url of a small JSON document: the walk's horizon and position (ledger/listing.py), its filters,
and a digest of the producer's scope. It needs no secret: whatever a caller puts in one, the ledger reads only
that caller's own jobs, and a cursor that is not well formed, or was issued to another producer, is refused.
A request that repeats the filters with a cursor must repeat them as they were; one that gives the cursor alone
walks on with the cursor's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import falcon

from actors.channels import REGISTRY
from ledger import callbacks, listing
from ledger.callbacks import CallbackView
from ledger.database import Database
from ledger.listing import Filters, Position
from ledger.queries import JobView
from ledger.states import Status
from ledger.timestamps import rfc3339
from service.errors import ApiError

#: Jobs per page when the query does not say.
DEFAULT_LIMIT = 50
FILTERS = ("status", "channel", "destination", "created_after", "created_before")
PARAMETERS = (*FILTERS, "limit", "cursor")
#: The longest destination a job can have (`jobs.destination`).
MAX_DESTINATION = 300
#: Version of the cursor's document, so that a later change of its shape can refuse older cursors clearly.
CURSOR_VERSION = 1


@dataclass(frozen=True)
class ListingQuery:
    """A valid query: its filters (scope not yet known) and, past the first page, where its walk stands."""

    filters: Filters
    limit: int
    cursor: Cursor | None = None


@dataclass(frozen=True)
class Cursor:
    horizon: str
    position: Position
    filters: Filters
    scope_digest: str


class Problems:
    """The query's faults, one per parameter, raised together as one 400."""

    def __init__(self) -> None:
        self.found: list[dict[str, str]] = []

    def add(self, parameter: str, message: str) -> None:
        self.found.append({"parameter": parameter, "message": message})

    def raise_any(self) -> None:
        if self.found:
            names = ", ".join(dict.fromkeys(problem["parameter"] for problem in self.found))
            raise ApiError(falcon.HTTP_400, "validation_error", f"The query is not valid: check {names}.", self.found)


def parse_query(params: Mapping[str, Any], *, dialect: str) -> ListingQuery:
    """The query of a GET /api/notifications, or a 400 `validation_error` naming every bad parameter."""
    problems = Problems()
    for name in sorted(set(params) - set(PARAMETERS)):
        problems.add(name, f"is not a parameter of this listing; known ones: {', '.join(PARAMETERS)}")
    single: dict[str, str] = {}
    for name in PARAMETERS:
        value = params.get(name)
        if isinstance(value, list) and name != "status":
            problems.add(name, "may be given once")
        elif value is not None:
            single[name] = value
    statuses = params.get("status")
    filters = _filters(
        {**single, "status": statuses if isinstance(statuses, list) else [statuses] if statuses else []}, problems
    )
    limit = _limit(single.get("limit"), problems)
    cursor = _cursor(single["cursor"], dialect, problems) if "cursor" in single else None
    problems.raise_any()
    filtered = any(name in params for name in FILTERS)
    if cursor is not None and filtered and cursor.filters != filters:
        problems.add("cursor", "was issued for a walk with other filters: give the same ones, or the cursor alone")
        problems.raise_any()
    return ListingQuery(filters=filters, limit=limit, cursor=cursor)


def _filters(values: Mapping[str, Any], problems: Problems) -> Filters:
    statuses: set[Status] = set()
    for value in values["status"]:
        try:
            statuses.add(Status(value))
        except ValueError:
            problems.add("status", f"{value!r} is not a status; one of {', '.join(s.value for s in Status)}")
    channel = values.get("channel")
    if channel is not None and channel not in REGISTRY:
        problems.add("channel", f"{channel!r} is not a channel; one of {', '.join(sorted(REGISTRY))}")
    destination = values.get("destination")
    if destination is not None and len(destination) > MAX_DESTINATION:
        problems.add("destination", f"is longer than a destination can be ({MAX_DESTINATION} characters)")
    elif destination is not None and not destination.isprintable():
        # Such as NUL, which a PostgreSQL text cannot hold: no destination has one.
        problems.add("destination", "must be printable text")
    return Filters(
        scope="",
        statuses=frozenset(statuses),
        channel=channel,
        destination=destination,
        created_after=_moment("created_after", values.get("created_after"), problems),
        created_before=_moment("created_before", values.get("created_before"), problems),
    )


def _moment(name: str, value: str | None, problems: Problems) -> datetime | None:
    if value is None:
        return None
    try:
        # RFC 3339 allows lower-case "t" and "z"; Python's parser wants them upper-case.
        moment = datetime.fromisoformat(value.upper())
        if moment.tzinfo is not None and "T" in value.upper():
            return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        pass
    problems.add(name, "must be an RFC 3339 time with a time zone, like 2026-01-31T09:00:00Z")
    return None


def _limit(value: str | None, problems: Problems) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if value.isascii() and value.isdigit() and 1 <= int(value) <= listing.MAX_LIMIT:
        return int(value)
    problems.add("limit", f"must be a whole number from 1 to {listing.MAX_LIMIT}")
    return DEFAULT_LIMIT


def scope_digest(scope: str) -> str:
    """What a cursor keeps of its producer: enough to refuse it to another, without naming the key."""
    return hashlib.sha256(f"wjp-listing:{scope}".encode()).hexdigest()[:32]


def encode_cursor(cursor: Cursor) -> str:
    f = cursor.filters
    document = {
        "v": CURSOR_VERSION,
        "h": cursor.horizon,
        "p": [rfc3339(cursor.position.created_at), cursor.position.job_id.hex],
        "s": cursor.scope_digest,
        "f": {
            "status": sorted(s.value for s in f.statuses),
            "channel": f.channel,
            "destination": f.destination,
            "created_after": rfc3339(f.created_after),
            "created_before": rfc3339(f.created_before),
        },
    }
    raw = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor(value: str, dialect: str, problems: Problems) -> Cursor | None:
    """The cursor in `value`, or None with a problem added: anything but a cursor this API could have issued."""
    try:
        document = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        if not isinstance(document, dict) or document.get("v") != CURSOR_VERSION:
            raise ValueError("not a cursor of this version")
        horizon, (created_at, job_id), digest, given = document["h"], document["p"], document["s"], document["f"]
        if not (isinstance(horizon, str) and listing.valid_horizon(dialect, horizon)):
            raise ValueError("not a horizon")
        if not (isinstance(digest, str) and isinstance(given, dict) and set(given) == set(FILTERS)):
            raise ValueError("malformed")
        texts = {name: given[name] for name in FILTERS if name != "status" and given[name] is not None}
        if not all(isinstance(v, str) for v in [created_at, job_id, *texts.values(), *given["status"]]):
            raise ValueError("malformed")
        inner = Problems()
        at = _moment("p", created_at, inner)
        filters = _filters({**texts, "status": given["status"]}, inner)
        if inner.found or at is None:
            raise ValueError("malformed")
        return Cursor(horizon, Position(at, uuid.UUID(hex=job_id)), filters, digest)
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeDecodeError):
        problems.add("cursor", "is not a cursor this listing handed out; start the walk again without one")
        return None


class JobListing:
    """Pages of a producer's jobs, as job bodies; `document` renders one (the body of GET /api/notifications/{id})."""

    def __init__(
        self, database: Database, document: Callable[[JobView, CallbackView | None], dict[str, Any]]
    ) -> None:
        self.database = database
        self.document = document

    def page(self, query: ListingQuery, *, scope: str) -> dict[str, Any]:
        cursor = query.cursor
        digest = scope_digest(scope)
        if cursor is not None and cursor.scope_digest != digest:
            problems = Problems()
            problems.add("cursor", "was issued to another API key; start the walk again without one")
            problems.raise_any()
        filters = replace(cursor.filters if cursor is not None else query.filters, scope=scope)
        def read(conn: Any) -> tuple[listing.Page, dict[uuid.UUID, CallbackView]]:
            page = listing.list_jobs(
                conn,
                filters,
                limit=query.limit,
                horizon=None if cursor is None else cursor.horizon,
                after=None if cursor is None else cursor.position,
            )
            return page, callbacks.callback_views(conn, [job.id for job in page.jobs])

        found, callback_of = self.database.run(read)
        following = None
        if found.after is not None:
            following = encode_cursor(Cursor(found.horizon, found.after, replace(filters, scope=""), digest))
        data = [self.document(job, callback_of.get(job.id)) for job in found.jobs]
        return {"data": data, "next_cursor": following}
