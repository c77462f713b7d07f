"""The schemas of the bodies the API takes and gives, the `components/schemas` of its OpenAPI document."""

from __future__ import annotations

from typing import Any

from ledger.states import Outcome, Status

_TIME = {"type": ["string", "null"], "format": "date-time"}
_ERROR_CODES = [
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

#: Every field of a destination's document, all of them always present.
_DESTINATION_PROPERTIES = {
    "key": {"type": "string"},
    "concurrency": {"type": "integer", "description": "The override, else the default."},
    "rate": {"type": ["number", "null"], "description": "The override, else the default; null: unlimited."},
    "in_flight": {"type": "integer"},
    "circuit": {
        "type": "string",
        "enum": ["closed", "open", "half_open"],
        "description": "An open circuit past `opened_until` reads open until its probe goes out.",
    },
    "consecutive_failures": {"type": "integer"},
    "opened_until": _TIME,
    "paused_until": _TIME,
    "waiting": {"type": "integer", "description": "Jobs PENDING or RETRY on this destination."},
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def schemas(channels: list[str]) -> dict[str, Any]:
    """Every named schema, for an API whose enabled channels are `channels`."""
    statuses = [s.value for s in Status]
    return {
        "NewNotification": {
            "type": "object",
            "required": ["recipient", "channel", "message"],
            "additionalProperties": False,
            "properties": {
                "recipient": {"type": "string", "minLength": 1},
                "channel": {"type": "string", "enum": channels},
                "message": {"type": "string", "minLength": 1, "maxLength": 16384},
                "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 255},
                "subject": {"type": ["string", "null"], "maxLength": 255},
                "metadata": {"type": ["object", "null"]},
                "send_at": {"type": ["string", "null"], "format": "date-time"},
            },
        },
        "Accepted": {
            "type": "object",
            "required": ["job_id", "status", "idempotency_key", "created_at"],
            "properties": {
                "job_id": {"type": "string", "format": "uuid"},
                "status": {"type": "string", "enum": statuses},
                "idempotency_key": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"},
            },
        },
        "NewNotificationBatch": {
            "type": "object",
            "required": ["notifications"],
            "additionalProperties": False,
            "properties": {
                "notifications": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1000,
                    "items": ref("NewNotification"),
                    "description": "Each with its own `idempotency_key` (the header does not stand for it).",
                }
            },
        },
        "BatchResults": {
            "type": "object",
            "required": ["results"],
            "properties": {
                "results": {"type": "array", "items": {"oneOf": [ref("BatchAccepted"), ref("BatchError")]}}
            },
        },
        "BatchAccepted": {
            "type": "object",
            "required": ["status", "job_id", "job_status", "idempotency_key", "created_at"],
            "properties": {
                "status": {"type": "integer", "enum": [202, 200], "description": "202 created, 200 a replay."},
                "job_id": {"type": "string", "format": "uuid"},
                "job_status": {
                    "type": "string",
                    "enum": statuses,
                    "description": "The job's status: the single POST's `status`, renamed beside the item's own.",
                },
                "idempotency_key": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"},
            },
        },
        "BatchError": {
            "type": "object",
            "required": ["status", "error", "message", "details"],
            "properties": {
                "status": {"type": "integer", "enum": [400, 422]},
                "error": {"type": "string", "examples": _ERROR_CODES},
                "message": {"type": "string"},
                "details": {"type": "array"},
            },
        },
        "Job": {
            "type": "object",
            "required": [
                "job_id",
                "status",
                "recipient",
                "channel",
                "destination",
                "idempotency_key",
                "attempts",
                "max_attempts",
                "next_attempt_at",
                "last_error",
                "created_at",
                "updated_at",
                "completed_at",
            ],
            "properties": {
                "job_id": {"type": "string", "format": "uuid"},
                "status": {"type": "string", "enum": statuses},
                "recipient": {"type": "string"},
                "channel": {"type": "string"},
                "destination": {
                    "type": "string",
                    "description": "The party the job is delivered to: the unit of limits and circuits.",
                },
                "idempotency_key": {"type": "string"},
                "subject": {"type": ["string", "null"]},
                "metadata": {"type": ["object", "null"]},
                "send_at": _TIME,
                "attempts": {"type": "integer"},
                "max_attempts": {"type": "integer"},
                "next_attempt_at": _TIME,
                "last_error": {"type": ["string", "null"]},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "completed_at": _TIME,
            },
        },
        "Attempts": {
            "type": "object",
            "required": ["job_id", "attempts"],
            "properties": {
                "job_id": {"type": "string", "format": "uuid"},
                "attempts": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["number", "started_at", "finished_at", "outcome", "error", "worker"],
                        "properties": {
                            "number": {"type": "integer"},
                            "started_at": {"type": "string", "format": "date-time"},
                            "finished_at": _TIME,
                            "outcome": {
                                "type": ["string", "null"],
                                "enum": [*(o.value for o in Outcome), None],
                            },
                            "error": {"type": ["string", "null"]},
                            "worker": {"type": ["string", "null"]},
                        },
                    },
                },
            },
        },
        "Stats": {
            "type": "object",
            "required": ["pending", "retry", "processing", "success", "failed", "avg_attempts_success"],
            "properties": {
                **{s.lower(): {"type": "integer"} for s in statuses},
                "avg_attempts_success": {"type": "number"},
                "oldest_due_age_seconds": {"type": "number"},
            },
        },
        "Limits": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "concurrency": {
                    "type": ["integer", "null"],
                    "minimum": 1,
                    "maximum": 1_000_000,
                    "description": "Most attempts in flight at once, fleet-wide; null: the default.",
                },
                "rate": {
                    "type": ["number", "null"],
                    "minimum": 0.001,
                    "maximum": 1_000_000,
                    "description": "Most attempts started per second; null: the default.",
                },
            },
        },
        "Destination": {
            "type": "object",
            "required": list(_DESTINATION_PROPERTIES),
            "properties": _DESTINATION_PROPERTIES,
        },
        "Destinations": {
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "array", "items": ref("Destination")}},
        },
        "Error": {
            "type": "object",
            "required": ["error", "message", "details"],
            "properties": {
                "error": {"type": "string", "examples": _ERROR_CODES},
                "message": {"type": "string"},
                "details": {"type": "array"},
            },
        },
    }
