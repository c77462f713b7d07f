"""The schemas of the bodies the API takes and gives, the `components/schemas` of its OpenAPI document."""

from __future__ import annotations

from typing import Any

from ledger.states import Outcome, Status
from service import shapes

_TIME = {"type": ["string", "null"], "format": "date-time"}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def schemas(channels: list[str]) -> dict[str, Any]:
    """Every named schema, for an API whose enabled channels are `channels`: those declared as types in
    `service/shapes.py` generated from them, the job's, its attempts' and the stats' written here (still)."""
    statuses = [s.value for s in Status]
    return {
        **shapes.schemas(channels),
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
    }
