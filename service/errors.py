"""The API's one error shape, `{"error", "message", "details"}`, produced here for every 4xx and 5xx."""

from __future__ import annotations

import json
import logging
from typing import Any

import falcon
import falcon.asgi

from ledger.errors import LedgerUnavailable

log = logging.getLogger("wjp.api")

#: Seconds a client should wait before retrying after a 503.
RETRY_AFTER = 5

#: Error codes of Falcon's own errors, by status.
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    500: "internal_error",
    501: "not_implemented",
    503: "service_unavailable",
}


class ApiError(falcon.HTTPError):
    """An error with our code and an optional list of details (for example one per bad field)."""

    def __init__(
        self,
        status: str,
        code: str,
        message: str,
        details: list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, title=code, description=message, headers=headers)
        self.code = code
        self.details = details or []


def error_body(error: falcon.HTTPError) -> dict[str, Any]:
    if isinstance(error, ApiError):
        return {"error": error.code, "message": error.description, "details": error.details}
    code = _CODES.get(error.status_code, "error")
    message = error.description or error.title or code.replace("_", " ")
    if error.status_code == 404:
        message = "There is nothing at this path."
    elif error.status_code == 405:
        message = "This path does not accept that method."
    return {"error": code, "message": message, "details": []}


def serialize_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Falcon's error serializer: always JSON, whatever the client's Accept header says."""
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(error_body(error))
    if error.status_code == 405:
        resp.set_header("Allow", error.headers.get("Allow", "") if error.headers else "")


async def handle_ledger_unavailable(
    req: falcon.Request, resp: falcon.Response, ex: LedgerUnavailable, params: Any
) -> None:
    log.warning("ledger unavailable: %s", ex)
    raise ApiError(
        falcon.HTTP_503,
        "ledger_unavailable",
        "The ledger cannot be reached right now; nothing was recorded. Try again shortly.",
        headers={"Retry-After": str(RETRY_AFTER)},
    )


async def handle_unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
    if isinstance(ex, falcon.HTTPError):
        raise ex
    log.exception("unexpected error on %s %s", req.method, req.path)
    raise ApiError(falcon.HTTP_500, "internal_error", "The server hit an unexpected error; it has been logged.")


def register(app: falcon.asgi.App) -> None:
    """Wire every error path of `app` to the one shape above."""
    app.set_error_serializer(serialize_error)
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(LedgerUnavailable, handle_ledger_unavailable)
