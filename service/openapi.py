"""The OpenAPI 3.1 description of the API, served at /openapi.json; a test keeps it in step with the routes."""

from __future__ import annotations

from typing import Any

import falcon

from ledger.states import Outcome, Status
from service.callbacks import CALLBACK_SCHEMA, CALLBACK_URL_SCHEMA
from service.openapi_dashboard import dashboard_paths
from service.openapi_listing import LISTING_SCHEMAS, listing_operation

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
    "unsupported_media_type",
    "ledger_unavailable",
    "redis_unavailable",
    "rate_limited",
    "sessions_unavailable",
    "not_ready",
    "forbidden",
    "internal_error",
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): {"$ref": "#/components/responses/Error"} for status in statuses}


def _rate_limited(description: str) -> dict[str, Any]:
    """429 `rate_limited`, with the whole seconds to wait in `Retry-After`."""
    return {
        "description": description,
        "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
        "content": {"application/json": {"schema": _ref("Error")}},
    }


def _html(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def _see_other(description: str) -> dict[str, Any]:
    return {"description": description, "headers": {"Location": {"schema": {"type": "string"}}}}


_ADMIN = [{"adminToken": []}, {}]
#: A producer key once any exists (`wjp api-key create`); none before.
_PRODUCER = [{"apiKey": []}, {}]
_FORM = {
    "required": True,
    "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}},
}


_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_DESTINATION_KEY = {
    "name": "key",
    "in": "path",
    "required": True,
    "description": "`<channel>` or `<channel>:<host>[:<port>]`, an IPv6 host in brackets: `webhook:[2001:db8::1]:443`. "
    "Read case-insensitively in the host; any well-formed key answers (the defaults when nothing is known of it).",
    "schema": {"type": "string"},
}
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


def document(channels: list[str]) -> dict[str, Any]:
    """The OpenAPI document for an API whose enabled channels are `channels`."""
    statuses = [s.value for s in Status]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "worker-job-processor",
            "version": "0.1.0",
            "description": "Notification intake with exactly-once idempotency keys; delivery with retries.",
        },
        "paths": {
            "/api/notifications": {
                "post": {
                    "summary": "Submit a notification (idempotent by key)",
                    "security": _PRODUCER,
                    "parameters": [
                        {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}}
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("NewNotification")}},
                    },
                    "responses": {
                        "202": _json(_ref("Accepted"), "Recorded; delivery follows"),
                        "200": _json(_ref("Accepted"), "A replay of an earlier request with this key"),
                        **_errors(400, 401, 413, 415, 422, 503),
                        "429": _rate_limited("Over the API key's rate (WJP_API_KEY_RATE or its own)"),
                    },
                },
                "get": listing_operation(channels),
            },
            "/api/notifications/{job_id}": {
                "parameters": [_JOB_ID],
                "get": {
                    "summary": "A notification's status",
                    "security": _PRODUCER,
                    "responses": {"200": _json(_ref("Job"), "The notification"), **_errors(401, 404, 503)},
                },
                "delete": {
                    "summary": "Cancel a PENDING or RETRY notification",
                    "security": _PRODUCER,
                    "responses": {"200": _json(_ref("Job"), "Cancelled"), **_errors(401, 404, 409, 503)},
                },
            },
            "/api/notifications/{job_id}/attempts": {
                "parameters": [_JOB_ID],
                "get": {
                    "summary": "Every delivery attempt, oldest first",
                    "security": _PRODUCER,
                    "responses": {"200": _json(_ref("Attempts"), "The attempts"), **_errors(401, 404, 503)},
                },
            },
            "/internal/queue/stats": {
                "get": {
                    "summary": "Counts by status",
                    "security": _ADMIN,
                    "responses": {"200": _json(_ref("Stats"), "The counts"), **_errors(401, 503)},
                }
            },
            "/internal/notifications/{job_id}/retry": {
                "parameters": [_JOB_ID],
                "post": {
                    "summary": "Send a FAILED notification again with a fresh attempt budget",
                    "security": _ADMIN,
                    "responses": {"202": _json(_ref("Job"), "Queued again"), **_errors(401, 404, 409, 503)},
                },
            },
            "/internal/destinations": {
                "get": {
                    "summary": "Destinations with limits set, a circuit not closed, a pause, jobs in flight or waiting",
                    "security": _ADMIN,
                    "responses": {"200": _json(_ref("Destinations"), "The destinations"), **_errors(401, 503)},
                }
            },
            "/internal/destinations/{key}": {
                "parameters": [_DESTINATION_KEY],
                "get": {
                    "summary": "One destination: its limits, circuit and waiting jobs",
                    "security": _ADMIN,
                    "responses": {"200": _json(_ref("Destination"), "The destination"), **_errors(401, 404, 503)},
                },
                "put": {
                    "summary": "Override a destination's limits; every worker applies them within 5 s",
                    "description": "A number sets a limit, null takes it back to the default, a limit left out of "
                    "the body stays as it is.",
                    "security": _ADMIN,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Limits")}}},
                    "responses": {
                        "200": _json(_ref("Destination"), "The destination with its new limits"),
                        **_errors(400, 401, 404, 413, 415, 503),
                    },
                },
            },
            "/internal/dashboard": {
                "get": {
                    "summary": "The operators' dashboard (HTML); a browser without a session is sent to sign in",
                    "security": [*_ADMIN[:1], {"dashboardSession": []}, {}],
                    "parameters": [
                        {"name": "q", "in": "query", "required": False, "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": _html("The dashboard"),
                        "303": _see_other("To the sign-in page"),
                        **_errors(401, 503),
                    },
                }
            },
            "/internal/dashboard/login": {
                "get": {
                    "summary": "The dashboard's sign-in page (HTML)",
                    "responses": {"200": _html("The sign-in form"), "303": _see_other("No admin token is set")},
                },
                "post": {
                    "summary": "Sign in with the admin token: starts a session of 12 h, set in the session cookie",
                    "requestBody": _FORM,
                    "responses": {
                        "303": _see_other("To the dashboard, or back to the form"),
                        **_errors(403, 413, 415, 503),
                        "429": _rate_limited("10 failed sign-ins from this address within its minute"),
                    },
                },
            },
            "/internal/dashboard/logout": {
                "post": {
                    "summary": "Sign out: ends the session on the server and clears the cookie",
                    "responses": {"303": _see_other("To the sign-in page"), **_errors(403, 503)},
                },
            },
            "/internal/dashboard/jobs/{job_id}/retry": {
                "parameters": [_JOB_ID],
                "post": {
                    "summary": "A job's retry button: retries a FAILED job, then back to the page in its form's `back`",
                    "security": [*_ADMIN[:1], {"dashboardSession": []}, {}],
                    "requestBody": _FORM,
                    "responses": {"303": _see_other("To the page"), **_errors(401, 403, 404, 413, 415, 503)},
                },
            },
            **dashboard_paths(),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (text format)",
                    "security": _ADMIN,
                    "responses": {
                        "200": {
                            "description": "The metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(401),
                    },
                }
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json({"type": "object"}, "Up")}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness: ledger and Redis reachable",
                    "responses": {"200": _json({"type": "object"}, "Ready"), **_errors(503)},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}
            },
        },
        "components": {
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer", "description": "WJP_ADMIN_TOKEN"},
                "apiKey": {"type": "http", "scheme": "bearer", "description": "A key from `wjp api-key create`"},
                "dashboardSession": {"type": "apiKey", "in": "cookie", "name": "wjp_dashboard"},
            },
            "responses": {"Error": _json(_ref("Error"), "An error")},
            "schemas": {
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
                        "callback_url": CALLBACK_URL_SCHEMA,
                    },
                },
                "Callback": CALLBACK_SCHEMA,
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
                        "callback": {"anyOf": [_ref("Callback"), {"type": "null"}]},
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
                    "properties": {"data": {"type": "array", "items": _ref("Destination")}},
                },
                **LISTING_SCHEMAS,
                "Error": {
                    "type": "object",
                    "required": ["error", "message", "details"],
                    "properties": {
                        "error": {"type": "string", "examples": _ERROR_CODES},
                        "message": {"type": "string"},
                        "details": {"type": "array"},
                    },
                },
            },
        },
    }


class OpenApiDocument:
    """GET /openapi.json"""

    def __init__(self, channels: list[str]) -> None:
        self._document = document(channels)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self._document
