"""Reading request bodies: content type, size limit and strict JSON, before any work is done."""

from __future__ import annotations

import json
import math
from typing import Any

import falcon
import msgspec

from service.errors import ApiError

#: Largest request body accepted, in bytes.
MAX_BODY_BYTES = 64 * 1024

# msgspec reads a valid body ~10 × faster than json.loads (bench/README.md) and to the same values; what it
# refuses goes through json.loads, which says what is wrong in today's words, or reads what msgspec is stricter
# about (a lone UTF-16 surrogate escape, left for validation to name the field).
_decode = msgspec.json.Decoder().decode


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON but no double holds it: it would become infinity, which JSON cannot carry back.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text} is too large")
    return value


async def receive_json_object(req: falcon.Request, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """Read the body (at most `limit` + 1 bytes) into `req.context.body`, then parse it as `read_json_object` does.
    What its headers already refuse is refused before any of it is read (or waited for)."""
    return json_object(await receive_body(req, limit), limit)


async def receive_body(req: falcon.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, read as `receive_json_object` reads it (the 415 and 413 alike), not yet parsed."""
    _check_headers(req, limit)
    raw = req.context.body = await req.stream.read(limit + 1)
    if len(raw) > limit:
        raise _too_large(limit)
    return raw


def read_json_object(req: falcon.Request, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The body read so far (`req.context.body`: at most `limit` + 1 bytes are ever read) as a JSON object, or a
    415/413/400 `ApiError` saying what is wrong with it."""
    _check_headers(req, limit)
    return json_object(req.context.body, limit)


def json_object(raw: bytes, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """`raw` as a JSON object, or the 413/400 `ApiError` saying what is wrong with it."""
    if len(raw) > limit:
        raise _too_large(limit)
    try:
        body = _decode(raw)
    except (msgspec.MsgspecError, RecursionError):
        body = _strict_json(raw)
    if not isinstance(body, dict):
        raise ApiError(
            falcon.HTTP_400,
            "validation_error",
            "The body must be a JSON object.",
            [{"field": None, "message": f"expected an object, got {type(body).__name__}"}],
        )
    return body


def _strict_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ApiError(falcon.HTTP_400, "invalid_json", f"The body is not valid JSON: {exc}") from None


def _check_headers(req: falcon.Request, limit: int) -> None:
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(
            falcon.HTTP_415,
            "unsupported_media_type",
            "Send the body as JSON with 'Content-Type: application/json'.",
        )
    if req.content_length is not None and req.content_length > limit:
        raise _too_large(limit)


def _too_large(limit: int) -> ApiError:
    return ApiError(falcon.HTTP_413, "payload_too_large", f"The body is larger than the limit of {limit} bytes.")
