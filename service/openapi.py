"""The OpenAPI 3.1 description of the API, served at /openapi.json; a test keeps it in step with the routes."""

from __future__ import annotations

from typing import Any

import falcon

from service import shapes
from service.openapi_dashboard import dashboard_paths
from service.openapi_listing import LISTING_SCHEMAS, listing_operation


def ref(name: str) -> dict[str, str]:
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
        "content": {"application/json": {"schema": ref("Error")}},
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


def document(channels: list[str]) -> dict[str, Any]:
    """The OpenAPI document for an API whose enabled channels are `channels`."""
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
                        "content": {"application/json": {"schema": ref("NewNotification")}},
                    },
                    "responses": {
                        "202": _json(ref("Accepted"), "Recorded; delivery follows"),
                        "200": _json(ref("Accepted"), "A replay of an earlier request with this key"),
                        **_errors(400, 401, 413, 415, 422, 503),
                        "429": _rate_limited("Over the API key's rate (WJP_API_KEY_RATE or its own)"),
                    },
                },
                "get": listing_operation(channels),
            },
            "/api/notifications/batch": {
                "post": {
                    "summary": "Submit up to 1,000 notifications, each answered as its own single POST would be",
                    "description": "Each item carries its own `idempotency_key`; a key repeated in the batch is a "
                    "replay or a mismatch, as if the items had come one after the other. Each item counts against "
                    "the API key's rate. Over 1,000 items: 413 `batch_too_large`; over 4 MiB: 413 "
                    "`payload_too_large`.",
                    "security": _PRODUCER,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("NewNotificationBatch")}},
                    },
                    "responses": {
                        "200": _json(ref("BatchResults"), "One result per item, in the batch's order"),
                        **_errors(400, 401, 413, 415, 503),
                        "429": _rate_limited("The batch's items are over the API key's rate"),
                    },
                }
            },
            "/api/notifications/{job_id}": {
                "parameters": [_JOB_ID],
                "get": {
                    "summary": "A notification's status",
                    "security": _PRODUCER,
                    "responses": {"200": _json(ref("Job"), "The notification"), **_errors(401, 404, 503)},
                },
                "delete": {
                    "summary": "Cancel a PENDING or RETRY notification",
                    "security": _PRODUCER,
                    "responses": {"200": _json(ref("Job"), "Cancelled"), **_errors(401, 404, 409, 503)},
                },
            },
            "/api/notifications/{job_id}/attempts": {
                "parameters": [_JOB_ID],
                "get": {
                    "summary": "Every delivery attempt, oldest first",
                    "security": _PRODUCER,
                    "responses": {"200": _json(ref("Attempts"), "The attempts"), **_errors(401, 404, 503)},
                },
            },
            "/internal/queue/stats": {
                "get": {
                    "summary": "Counts by status",
                    "security": _ADMIN,
                    "responses": {"200": _json(ref("Stats"), "The counts"), **_errors(401, 503)},
                }
            },
            "/internal/notifications/{job_id}/retry": {
                "parameters": [_JOB_ID],
                "post": {
                    "summary": "Send a FAILED notification again with a fresh attempt budget",
                    "security": _ADMIN,
                    "responses": {"202": _json(ref("Job"), "Queued again"), **_errors(401, 404, 409, 503)},
                },
            },
            "/internal/destinations": {
                "get": {
                    "summary": "Destinations with limits set, a circuit not closed, a pause, jobs in flight or waiting",
                    "security": _ADMIN,
                    "responses": {"200": _json(ref("Destinations"), "The destinations"), **_errors(401, 503)},
                }
            },
            "/internal/destinations/{key}": {
                "parameters": [_DESTINATION_KEY],
                "get": {
                    "summary": "One destination: its limits, circuit and waiting jobs",
                    "security": _ADMIN,
                    "responses": {"200": _json(ref("Destination"), "The destination"), **_errors(401, 404, 503)},
                },
                "put": {
                    "summary": "Override a destination's limits; every worker applies them within 5 s",
                    "description": "A number sets a limit, null takes it back to the default, a limit left out of "
                    "the body stays as it is.",
                    "security": _ADMIN,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": ref("Limits")}}},
                    "responses": {
                        "200": _json(ref("Destination"), "The destination with its new limits"),
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
            "responses": {"Error": _json(ref("Error"), "An error")},
            "schemas": {**shapes.schemas(channels), **LISTING_SCHEMAS},
        },
    }


class OpenApiDocument:
    """GET /openapi.json"""

    def __init__(self, channels: list[str]) -> None:
        self._document = document(channels)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self._document
