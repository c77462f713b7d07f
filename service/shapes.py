"""The bodies the API takes and gives, each declared once as a type: validation checks a body against its type,
the per-field error details are read from the type's rules (service/field_rules.py), and the OpenAPI document's
schemas are generated from the types.

msgspec, not pydantic v2: it checks a body in a fifth of the time and costs 4 MB, not 19, per API process
(bench/README.md, "Bodies declared once").
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from ledger.destinations import MAX_CONCURRENCY, MAX_RATE, MIN_RATE
from ledger.states import Outcome, Status

MAX_KEY_LENGTH = 255
MAX_MESSAGE_LENGTH = 16_384
MAX_SUBJECT_LENGTH = 255
#: Most notifications one batch may hold.
MAX_BATCH_ITEMS = 1000
RATE_UNIT = "attempts per second"

#: An RFC 3339 time with its time zone; read by `validation.py`, which knows the rules a format cannot say.
Time = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
JobId = Annotated[str, Meta(extra_json_schema={"format": "uuid"})]

ERROR_CODES = [
    "invalid_json",
    "validation_error",
    "idempotency_key_required",
    "idempotency_key_conflict",
    "idempotency_key_mismatch",
    "unauthorized",
    "not_found",
    "method_not_allowed",
    "not_cancellable",
    "not_failed",
    "payload_too_large",
    "batch_too_large",
    "unsupported_media_type",
    "ledger_unavailable",
    "redis_unavailable",
    "rate_limited",
    "sessions_unavailable",
    "not_ready",
    "forbidden",
    "internal_error",
]


class NewNotification(msgspec.Struct, forbid_unknown_fields=True):
    """A notification to deliver: the body of a single POST, and each item of a batch."""

    recipient: Annotated[str, Meta(min_length=1, description="As its channel names a party: see `channel`.")]
    channel: Annotated[str, Meta(description="One of the enabled channels.")]
    message: Annotated[str, Meta(min_length=1, max_length=MAX_MESSAGE_LENGTH)]
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=MAX_KEY_LENGTH)] | None = None
    subject: Annotated[str, Meta(max_length=MAX_SUBJECT_LENGTH)] | None = None
    metadata: Annotated[dict[str, Any], Meta(description="At most 4 KiB as JSON.")] | None = None
    send_at: Annotated[Time, Meta(description="Not delivered before this instant.")] | None = None
    callback_url: (
        Annotated[
            str,
            Meta(
                description="Where a signed Standard Webhooks event is POSTed when the notification reaches SUCCESS, "
                "FAILED or CANCELLED; checked as a webhook recipient is."
            ),
        ]
        | None
    ) = None
    # A new optional field is declared here (`name: Annotated[str, Meta(...)] | None = None`); the rules no type can
    # say (a URL's host, say) go in `validation.py`.


class NewNotificationBatch(msgspec.Struct, forbid_unknown_fields=True):
    """Up to 1,000 notifications, each with its own `idempotency_key` (the header does not stand for them)."""

    notifications: Annotated[list[NewNotification], Meta(min_length=1, max_length=MAX_BATCH_ITEMS)]


class Accepted(msgspec.Struct):
    """A notification recorded (202) or replayed (200)."""

    job_id: JobId
    status: Status
    idempotency_key: str
    created_at: Time


class BatchResult(msgspec.Struct, omit_defaults=True):
    """One item's answer: `status` is its HTTP status; 202/200 carry the single POST's body (the job's status as
    `job_status`), 400/422 its error body."""

    status: Annotated[int, Meta(description="202 recorded, 200 replayed, 400 invalid, 422 key mismatch.")]
    #: The id itself: msgspec writes the text `str` would (and the same schema) without a Python call per item.
    job_id: uuid.UUID | None = None
    job_status: Status | None = None
    idempotency_key: str | None = None
    created_at: Time | None = None
    error: Annotated[str, Meta(examples=ERROR_CODES)] | None = None
    message: str | None = None
    details: list[Any] | None = None


class BatchResults(msgspec.Struct):
    """One result per item of the batch, in its order."""

    results: list[BatchResult]


class Callback(msgspec.Struct):
    """A job's status callback: the job status it reports (`event`, null until the job finishes) and how its
    delivery stands."""

    url: str
    event: Literal["SUCCESS", "FAILED", "CANCELLED"] | None
    status: Literal["waiting", "pending", "delivering", "retrying", "delivered", "failed"]
    attempts: int
    last_error: str | None


class Job(msgspec.Struct):
    """A notification and where its delivery stands."""

    job_id: JobId
    status: Status
    recipient: str
    channel: str
    destination: Annotated[str, Meta(description="The party the job is delivered to: the unit of limits and circuits.")]
    idempotency_key: str
    subject: str | None
    metadata: dict[str, Any] | None
    send_at: Time | None
    attempts: int
    max_attempts: int
    next_attempt_at: Time | None
    last_error: str | None
    created_at: Time
    updated_at: Time
    completed_at: Time | None
    callback: Callback | None


class Attempt(msgspec.Struct):
    """One delivery attempt; `outcome` is null while it runs."""

    number: int
    started_at: Time
    finished_at: Time | None
    outcome: Outcome | None
    error: str | None
    worker: str | None


class Attempts(msgspec.Struct):
    """Every delivery attempt of a job, oldest first."""

    job_id: JobId
    attempts: list[Attempt]


class Stats(msgspec.Struct):
    """The ledger's jobs counted by status, and how long the oldest due job has waited."""

    pending: int
    retry: int
    processing: int
    success: int
    failed: int
    cancelled: int
    avg_attempts_success: Annotated[float, Meta(description="The mean attempts of SUCCESS jobs; 0 without any.")]
    oldest_due_age_seconds: float


Concurrency = Annotated[int, Meta(ge=1, le=MAX_CONCURRENCY, description="Most attempts in flight at once, fleet-wide.")]
Rate = Annotated[
    float, Meta(ge=MIN_RATE, le=MAX_RATE, description="Most attempts started per second.", extra={"unit": RATE_UNIT})
]


class Limits(msgspec.Struct, forbid_unknown_fields=True):
    """A destination's limits to change: a number sets one, null takes it back to the default, a limit left out
    stays as it is."""

    concurrency: Concurrency | UnsetType | None = UNSET
    rate: Rate | UnsetType | None = UNSET


class Destination(msgspec.Struct):
    """A destination: its limits (the override, else the default), its circuit and its jobs."""

    key: str
    concurrency: int
    rate: Annotated[float, Meta(description="Null: unlimited.")] | None
    in_flight: int
    circuit: Annotated[
        Literal["closed", "open", "half_open"],
        Meta(description="An open circuit past `opened_until` reads open until its probe goes out."),
    ]
    consecutive_failures: int
    opened_until: Time | None
    paused_until: Time | None
    waiting: Annotated[int, Meta(description="Jobs PENDING or RETRY on this destination.")]


class Destinations(msgspec.Struct):
    """Every destination with limits set, a circuit not closed, a pause, or jobs in flight or waiting."""

    data: list[Destination]


class Error(msgspec.Struct):
    """Every error, 4xx or 5xx."""

    error: Annotated[str, Meta(examples=ERROR_CODES)]
    message: str
    details: list[Any]


#: Every body declared here, as the OpenAPI document names its schemas.
TYPES = (
    NewNotification,
    NewNotificationBatch,
    Accepted,
    BatchResults,
    Job,
    Attempts,
    Stats,
    Limits,
    Destination,
    Destinations,
    Error,
)


def schemas(channels: list[str]) -> dict[str, Any]:
    """The OpenAPI schemas of the types above, for an API whose enabled channels are `channels`."""
    _, components = msgspec.json.schema_components(TYPES, ref_template="#/components/schemas/{name}")
    components["NewNotification"]["properties"]["channel"]["enum"] = channels
    return components
