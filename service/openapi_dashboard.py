"""The OpenAPI description of the dashboard's pages and forms past its overview, which service/openapi.py puts in
its document. Every one needs the admin token (or a dashboard session); each form is accepted from the dashboard
only and answers 303 to the page that shows what it did."""

from __future__ import annotations

from typing import Any

_SIGNED_IN = [{"adminToken": []}, {"dashboardSession": []}, {}]
_ERROR = {"$ref": "#/components/responses/Error"}
_TEXT = {"type": "string"}
_MOMENT = {"type": "string", "description": "RFC 3339, or `YYYY-MM-DDTHH:MM[:SS]` read as UTC"}
_JOB_FILTERS = [
    ("status", {"type": "string", "enum": ["PENDING", "PROCESSING", "RETRY", "SUCCESS", "FAILED", "CANCELLED"]}),
    ("channel", _TEXT),
    ("destination", _TEXT),
    ("from", {**_MOMENT, "description": f"created at or after: {_MOMENT['description']}"}),
    ("to", {**_MOMENT, "description": f"created before: {_MOMENT['description']}"}),
]
_ERROR_TEXT = {"type": "string", "description": "the jobs' exact `last_error`, as a JSON string"}
_RETRY_FILTERS = [*_JOB_FILTERS[1:], ("error", _ERROR_TEXT)]


def _query(fields: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [{"name": name, "in": "query", "required": False, "schema": schema} for name, schema in fields]


def _form(fields: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    schema = {"type": "object", "properties": dict(fields)}
    return {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": schema}}}


def _page(summary: str, *errors: int, parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": _SIGNED_IN,
        **({"parameters": parameters} if parameters else {}),
        "responses": {
            "200": {"description": "The page", "content": {"text/html": {"schema": _TEXT}}},
            "303": {"description": "To the sign-in page", "headers": {"Location": {"schema": _TEXT}}},
            **{str(status): _ERROR for status in (401, *errors, 503)},
        },
    }


def _action(summary: str, fields: list[tuple[str, dict[str, Any]]], *errors: int) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": _SIGNED_IN,
        "requestBody": _form(fields),
        "responses": {
            "303": {"description": "To the page that shows what was done", "headers": {"Location": {"schema": _TEXT}}},
            **{str(status): _ERROR for status in (400, 401, 403, *errors, 413, 415, 503)},
        },
    }


def dashboard_paths() -> dict[str, Any]:
    limits = [("key", _TEXT), ("concurrency", _TEXT), ("rate", _TEXT)]
    return {
        "/internal/dashboard/jobs": {
            "get": _page(
                "Every producer's jobs, newest first, filtered, 50 a page (HTML)",
                400,
                parameters=_query([*_JOB_FILTERS, ("after", {**_TEXT, "description": "the cursor of the next page"})]),
            )
        },
        "/internal/dashboard/jobs/{job_id}": {
            "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": _TEXT}],
            "get": _page("One job: its fields, its attempts as a timeline, its callback (HTML)", 404),
        },
        "/internal/dashboard/failures": {
            "get": _page(
                "FAILED jobs grouped by destination and error, the largest groups first (HTML)",
                parameters=_query([("retried", {"type": "integer"})]),
            )
        },
        "/internal/dashboard/failures/retry": {
            "get": _page(
                "How many FAILED jobs a bulk retry with these filters would queue again, and its button (HTML)",
                400,
                parameters=_query(_RETRY_FILTERS),
            ),
            "post": {
                **_page(
                    "The same, for filters sent as a form (an error too long for an address); changes nothing",
                    *(400, 403, 413, 415),
                ),
                "requestBody": _form(_RETRY_FILTERS),
            },
        },
        "/internal/dashboard/failures/retry/run": {
            "post": _action(
                "Queue again, in batches, the FAILED jobs the confirmation counted (failed before `failed_before`)",
                [*_RETRY_FILTERS, ("failed_before", _MOMENT)],
            )
        },
        "/internal/dashboard/destinations": {
            "get": _page("Destinations: limits, circuits, pauses, waiting jobs, and their forms (HTML)")
        },
        "/internal/dashboard/destinations/limits": {
            "post": _action("Set a destination's limits: empty keeps one, `default` clears it", limits)
        },
        "/internal/dashboard/destinations/reset": {
            "post": _action("Close a destination's circuit and lift its pause", [("key", _TEXT)])
        },
        "/internal/dashboard/health": {
            "get": _page("The last hour: throughput per minute by outcome, POST → SUCCESS p50 and p99 (HTML, SVG)")
        },
    }
