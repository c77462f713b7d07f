"""The OpenAPI description of GET /api/notifications (the listing), which service/openapi.py puts in its document."""

from __future__ import annotations

from typing import Any

from ledger.listing import MAX_LIMIT
from ledger.states import Status
from service.listing import DEFAULT_LIMIT, MAX_DESTINATION


def _query(name: str, schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description, **extra}


def listing_operation(channels: list[str]) -> dict[str, Any]:
    """The GET operation of /api/notifications for an API whose enabled channels are `channels`."""
    moment = {"type": "string", "format": "date-time"}
    return {
        "summary": "The caller's notifications, newest first, a page at a time",
        "description": "Follow `next_cursor` (alone, or with the same filters) to walk on: a walk returns each job "
        "that matched when it began exactly once, and none created after it began. A job whose status changes "
        "during a walk is judged by the `status` filter on its status when its page is read. With API keys, a key "
        "lists its own jobs only.",
        "security": [{"apiKey": []}, {}],
        "parameters": [
            _query(
                "status",
                {"type": "array", "items": {"type": "string", "enum": [s.value for s in Status]}},
                "Jobs in any of these statuses (repeat the parameter for several).",
                style="form",
                explode=True,
            ),
            _query("channel", {"type": "string", "enum": channels}, "Jobs of this channel."),
            _query(
                "destination",
                {"type": "string", "maxLength": MAX_DESTINATION},
                "Jobs to this destination, as a job shows it (`webhook:host:port`, …).",
            ),
            _query("created_after", moment, "Jobs created at or after this time (RFC 3339, with a time zone)."),
            _query("created_before", moment, "Jobs created before this time (RFC 3339, with a time zone)."),
            _query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
                "Jobs per page.",
            ),
            _query("cursor", {"type": "string"}, "The `next_cursor` of the walk's previous page."),
        ],
        "responses": {
            "200": {
                "description": "A page of jobs, newest first",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobPage"}}},
            },
            **{str(status): {"$ref": "#/components/responses/Error"} for status in (400, 401, 503)},
        },
    }


#: The schemas the listing adds to the document's components.
LISTING_SCHEMAS: dict[str, Any] = {
    "JobPage": {
        "type": "object",
        "required": ["data", "next_cursor"],
        "properties": {
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "Opaque; null on the walk's last page.",
            },
        },
    },
}
