"""Reading what a dashboard page is sent: forms posted from the dashboard only, and the pages' query parameters."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import falcon

from service.dashboard.layout import BASE
from service.errors import ApiError

#: Largest form accepted (a token, a lookup text, an error group's text); read before anything else is done.
MAX_FORM_BYTES = 32768
#: What a redirect after an action can say, by its `notice` parameter; {job} is a job's id.
JOB_NOTICES = {
    "retried": "Job {job} was queued again.",
    "not_failed": "Job {job} is not FAILED; nothing was done.",
    "not_found": "No job has the id {job}.",
}


def same_origin(req: falcon.Request) -> None:
    """Refuse a form posted from another site. Browsers name the page's origin on every POST; the session
    cookie is SameSite=Strict already, and without an admin token this is what stops cross-site actions."""
    origin = req.get_header("Origin")
    if origin is None:
        return
    hosts = {req.get_header("Host"), req.get_header("X-Forwarded-Host")}
    if urlsplit(origin).netloc not in hosts - {None}:
        raise ApiError(falcon.HTTP_403, "forbidden", "Dashboard forms are accepted from the dashboard only.")


def read_form(req: falcon.Request) -> dict[str, str]:
    """The posted form (read into `req.context.body` before the responder ran, see `service.offload.Threaded`),
    after checking that it comes from the dashboard."""
    same_origin(req)
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media_type != falcon.MEDIA_URLENCODED:
        raise ApiError(falcon.HTTP_415, "unsupported_media_type", "Send the form as application/x-www-form-urlencoded.")
    raw: bytes = req.context.body
    if len(raw) > MAX_FORM_BYTES:
        raise ApiError(falcon.HTTP_413, "payload_too_large", f"The form is larger than {MAX_FORM_BYTES} bytes.")
    fields = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[-1] for name, values in fields.items()}


def invalid(field: str, message: str) -> ApiError:
    return ApiError(
        falcon.HTTP_400,
        "validation_error",
        f"The {field} is not valid: {message}.",
        [{"field": field, "message": message}],
    )


def text(value: str | None) -> str | None:
    """A filter's text, None when left empty; NUL never names anything (PostgreSQL text cannot hold it)."""
    value = (value or "").strip()
    if "\x00" in value:
        raise invalid("filter", "it contains a NUL character")
    return value or None


def exact_text(field: str, value: str | None) -> str | None:
    """A text to match exactly (an error group's `last_error`), sent as a JSON string: a browser rewrites every
    line break of a form's field as CRLF, which would make a multi-line error match nothing. None when empty."""
    if not value:
        return None
    try:
        found = json.loads(value)
    except ValueError:
        found = None
    if not isinstance(found, str):
        raise invalid(field, "expected the text as a JSON string")
    if "\x00" in found:
        raise invalid(field, "it contains a NUL character")
    return found


def moment(field: str, value: str | None) -> datetime | None:
    """A time from a form: RFC 3339, or a browser's `datetime-local` (no zone), read as UTC as the page says."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        found = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise invalid(field, f"expected a time like 2026-12-03T14:30 (UTC), got {value[:40]!r}") from None
    return found.replace(tzinfo=UTC) if found.tzinfo is None else found.astimezone(UTC)


def job_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(falcon.HTTP_404, "not_found", "No job has this id.") from None


def back_to(value: str | None) -> str:
    """Where to send the browser after an action: a dashboard page it names, else the overview. Never another
    site: only a path under the dashboard is followed."""
    value = value or ""
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not (parts.path == BASE or parts.path.startswith(BASE + "/")):
        return BASE
    # urlsplit drops line breaks before it judges, but they would still be in the Location header.
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in value):
        return BASE
    return value


def with_params(target: str, **params: str) -> str:
    """`target` (a path, maybe with a query already) with `params` set in its query, replacing any it had."""
    path, _, query = target.partition("?")
    kept = [(name, value) for name, value in parse_qsl(query, keep_blank_values=True) if name not in params]
    return f"{path}?{urlencode([*kept, *params.items()])}"


def job_notice(req: falcon.Request) -> str | None:
    """The text of a job action's notice named by the request's `notice` and `job`, None when there is none."""
    template = JOB_NOTICES.get(req.get_param("notice") or "")
    try:
        job = uuid.UUID(req.get_param("job") or "")
    except ValueError:
        return None
    return None if template is None else template.format(job=job)
