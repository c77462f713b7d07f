"""The API's side of status callbacks: `callback_url` checked at intake as a webhook recipient is, and the
`callback` object of a job's GET body."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors.channels.base import Channel
from ledger.callbacks import CallbackView
from ledger.queries import JobView, job_document
from ledger.states import Status

#: How the `callback` object names each status of a callback's delivery.
DELIVERY_STATUSES = {
    Status.PENDING: "pending",
    Status.RETRY: "retrying",
    Status.PROCESSING: "delivering",
    Status.SUCCESS: "delivered",
    Status.FAILED: "failed",
}


def callback_fields(value: Any, channels: Mapping[str, Channel], problems: list[tuple[str, str]]) -> dict[str, Any]:
    """The `NewNotification` fields of a body's `callback_url` (none when absent); a problem added when it is not a
    URL a webhook could be sent to (the same checks: absolute http(s), no user or password, a host that parses,
    no literal private address unless WJP_WEBHOOK_ALLOW_PRIVATE)."""
    if value is None:
        return {}
    if not isinstance(value, str):
        problems.append(("callback_url", "must be a string"))
        return {}
    webhook = channels.get("webhook")
    if webhook is None:
        problems.append(("callback_url", "cannot be used: the webhook channel is not enabled"))
        return {}
    problem = webhook.check_recipient(value) if value.strip() else "must not be empty"
    if problem:
        problems.append(("callback_url", problem))
        return {}
    return {"callback_url": value, "callback_destination": webhook.destination(value)}


def callback_document(view: CallbackView | None) -> dict[str, Any] | None:
    """The `callback` object of a job's GET body: null without a `callback_url`; `status` "waiting" until the job
    finishes, then the delivery's status for the `event` (the job status it reports)."""
    if view is None:
        return None
    return {
        "url": view.url,
        "event": None if view.event is None else view.event.value,
        "status": "waiting" if view.status is None else DELIVERY_STATUSES[view.status],
        "attempts": view.attempts,
        "last_error": view.last_error,
    }


def job_body(job: JobView, callback: CallbackView | None) -> dict[str, Any]:
    """The job as every answer of the API shows it (GET, a page of the listing, DELETE, a manual retry)."""
    return {**job_document(job), "callback": callback_document(callback)}
