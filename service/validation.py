"""Validation of a new notification: its type's rules (`shapes.NewNotification`), then those no type can say
(a recipient that fits its channel, text the ledger can store, metadata's size, send_at's instant), every bad field
named at once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import falcon
import msgspec
from msgspec import inspect

from actors.channels.base import Channel
from ledger import intake
from service.callbacks import callback_fields
from service.errors import ApiError
from service.field_rules import field_problems, json_type
from service.shapes import MAX_KEY_LENGTH, NewNotification

MAX_METADATA_BYTES = 4096
#: Deepest nesting of metadata accepted: far beyond any real use, and well inside Python's recursion limit.
MAX_METADATA_DEPTH = 32
#: Default of `WJP_MAX_SCHEDULE`: most seconds `send_at` may lie ahead (one year).
DEFAULT_MAX_SCHEDULE = 31_536_000.0
#: Where each field of a notification comes in the details: in the order its type declares them.
_ORDER = {field.encode_name: position for position, field in enumerate(inspect.type_info(NewNotification).fields)}
_FIELDS = NewNotification.__struct_fields__


def _text_problem(value: str) -> str | None:
    """Strings the ledger cannot store faithfully: NUL characters and lone surrogates."""
    if "\x00" in value:
        return "must not contain NUL characters"
    if value.isascii():
        return None  # no surrogate, and known without a pass over the text
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text"
    return None


def _nested_problem(value: Any, depth: int = 1) -> str | None:
    """Problems inside metadata: unstorable text, or nesting deeper than MAX_METADATA_DEPTH."""
    if isinstance(value, str):
        return _text_problem(value)
    if isinstance(value, dict | list) and depth > MAX_METADATA_DEPTH:
        return f"must not be nested deeper than {MAX_METADATA_DEPTH} levels"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        problem = (_text_problem(key) if isinstance(key, str) else None) or _nested_problem(item, depth + 1)
        if problem:
            return problem
    return None


def header_text(raw: str | None) -> str | None:
    """A header as the client wrote it: the server hands it over as Latin-1, clients send UTF-8."""
    if raw is None:
        return None
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise _invalid([("Idempotency-Key", "must be UTF-8 text")]) from None


def idempotency_key(body: Mapping[str, Any], header: str | None) -> str:
    """The request's key, from the body or the `Idempotency-Key` header (the same string either way)."""
    header = header_text(header)
    in_body = body.get("idempotency_key")
    if in_body is not None and not isinstance(in_body, str):
        raise _invalid([("idempotency_key", f"must be a string, got {json_type(in_body)}")])
    if in_body is not None and header is not None and in_body != header:
        raise ApiError(
            falcon.HTTP_400,
            "idempotency_key_conflict",
            "The Idempotency-Key header and the body's idempotency_key differ; send one, or the same in both.",
        )
    return checked_key(in_body if in_body is not None else header)


def checked_key(key: str | None) -> str:
    """The key given (in the body or the header), or the 400 that says why it cannot be one."""
    if key is None or key == "":
        raise ApiError(
            falcon.HTTP_400,
            "idempotency_key_required",
            "Give an idempotency key in the body ('idempotency_key') or the 'Idempotency-Key' header.",
        )
    problem = _text_problem(key)
    if len(key) > MAX_KEY_LENGTH:
        problem = f"must be 1 to {MAX_KEY_LENGTH} characters long, got {len(key)}"
    if problem:
        raise _invalid([("idempotency_key", problem)])
    return key


def type_problems(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Each field of `body` that breaks the rules of its type, `shapes.NewNotification`."""
    return field_problems(body, NewNotification, "is not a field of a notification")


def parse_notification(
    body: Mapping[str, Any],
    *,
    header_key: str | None,
    channels: Mapping[str, Channel],
    max_attempts: int,
    scope: str,
    max_schedule: float = DEFAULT_MAX_SCHEDULE,
    now: datetime | None = None,
) -> intake.NewNotification:
    """Check `body` and return the request to record, or raise a 400 naming every bad field. `send_at` may lie
    at most `max_schedule` seconds after `now` (default: the current time)."""
    key = idempotency_key(body, header_key)
    problems: list[tuple[str, str]] = []
    try:
        item = msgspec.convert(body, NewNotification)
    except msgspec.ValidationError:
        # The type names only the first problem it meets; its rules, read field by field, name them all. The fields
        # that break them are left out of what the rules below check.
        problems = type_problems(body)
        bad = {name for name, _ in problems}
        item = NewNotification(**{name: None if name in bad else body.get(name) for name in _FIELDS})
    return checked_notification(key, item, problems, channels, max_attempts, scope, max_schedule, now)


def checked_notification(
    key: str,
    item: NewNotification,
    problems: list[tuple[str, str]],
    channels: Mapping[str, Channel],
    max_attempts: int,
    scope: str,
    max_schedule: float = DEFAULT_MAX_SCHEDULE,
    now: datetime | None = None,
) -> intake.NewNotification:
    """The request to record from `item`, a notification of its type (but for fields that broke it, None here and
    named in `problems`) with the key `checked_key` gave, after the rules no type can say; or the 400 naming every
    bad field. A batch's items come here straight from its body's decoding (service/batch.py)."""

    recipient, channel_name, message, subject = item.recipient, item.channel, item.message, item.subject
    joined = f"{recipient}{channel_name}{message}{subject}"
    if "\x00" in joined or not joined.isascii():
        # Only then can a field hold text the ledger cannot store (known at once for plain ASCII without NUL).
        recipient, channel_name = _text("recipient", recipient, problems), _text("channel", channel_name, problems)
        message, subject = _text("message", message, problems), _text("subject", subject, problems)
    channel = None
    if channel_name is not None:
        channel = channels.get(channel_name)
        if channel is None:
            enabled = ", ".join(sorted(channels))
            problems.append(("channel", f"unknown channel {channel_name!r}; enabled channels: {enabled}"))
    if recipient is not None:
        # `isspace` is what `strip` strips, without a copy of the text.
        if not recipient or recipient.isspace():
            problems.append(("recipient", "must not be empty"))
        elif channel is not None:
            problem = channel.check_recipient(recipient)
            if problem:
                problems.append(("recipient", problem))
    if message is not None and (not message or message.isspace()):
        problems.append(("message", "must not be empty"))
    if subject is not None and ("\r" in subject or "\n" in subject):
        # A line break in a subject could smuggle a header into the email.
        problems.append(("subject", "must be a single line"))

    metadata = item.metadata
    if metadata is not None:
        problem = _nested_problem(metadata)
        if problem:
            problems.append(("metadata", problem))
        else:
            size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
            if size > MAX_METADATA_BYTES:
                problems.append(("metadata", f"must be at most {MAX_METADATA_BYTES} bytes as JSON, got {size}"))

    send_at = None if item.send_at is None else _parse_send_at(item.send_at, problems)
    if send_at is not None and (send_at - (now or datetime.now(UTC))).total_seconds() > max_schedule:
        # A job parked for centuries is a typo or a way to fill the ledger with rows nothing will ever send.
        problems.append(("send_at", f"must be at most {max_schedule:g} seconds ahead (WJP_MAX_SCHEDULE)"))

    callback = {} if item.callback_url is None else callback_fields(item.callback_url, channels, problems)
    if problems:
        # In the order the type declares its fields, unknown ones first.
        raise _invalid(sorted(problems, key=lambda problem: _ORDER.get(problem[0], -1)))
    assert recipient is not None and channel_name is not None and channel is not None and message is not None
    # Positional: a batch builds one per item, and keywords cost it five times as much (bench/README.md).
    return intake.NewNotification(
        key, recipient, channel_name, message, max_attempts, subject, metadata, send_at, scope,
        channel.destination(recipient), callback.get("callback_url"), callback.get("callback_destination"),
    )  # fmt: skip


def _text(name: str, value: str | None, problems: list[tuple[str, str]]) -> str | None:
    """The field's text unless it is absent, broke its type, or is not storable by the ledger (a problem then)."""
    if value is None:
        return None
    problem = _text_problem(value)
    if problem:
        problems.append((name, problem))
        return None
    return value


def _parse_send_at(value: Any, problems: list[tuple[str, str]]) -> datetime | None:
    if value is None:
        return None
    try:
        # RFC 3339 allows lower-case "t" and "z"; Python's parser wants them upper-case.
        moment = datetime.fromisoformat(value.upper())
        if moment.tzinfo is not None:
            moment.astimezone(UTC)  # a time near year 1 or 9999 may not exist in UTC
    except (ValueError, OverflowError):
        moment = None
    if moment is None or "T" not in value.upper() or moment.tzinfo is None:
        problems.append(("send_at", "must be an RFC 3339 time with a time zone, like 2026-01-31T09:00:00Z"))
        return None
    return moment


def _invalid(problems: list[tuple[str, str]]) -> ApiError:
    fields = ", ".join(dict.fromkeys(field for field, _ in problems))
    return ApiError(
        falcon.HTTP_400,
        "validation_error",
        f"The notification is not valid: check {fields}.",
        [{"field": field, "message": message} for field, message in problems],
    )
