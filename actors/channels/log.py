"""The log channel: writes each notification to the worker's log, for development and benchmarks."""

from __future__ import annotations

import logging
import re

from actors.channels import register
from actors.channels.base import Channel, Notification, PermanentError

#: The logger the notifications go to, so an operator can route or silence them on their own.
logger = logging.getLogger("wjp.channels.log")

#: Longest message written in full; longer ones are cut so one job cannot flood the log.
MAX_LOGGED_CHARS = 500


#: Unicode's control characters (category Cc): C0, DEL and C1. A class of ranges, not a per-character lookup:
#: it runs on every POST for this channel and every delivery.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def has_control_characters(text: str) -> bool:
    """Return whether `text` holds a control character (CR, LF, NUL, ESC, …)."""
    if text.isascii():
        # In ASCII, what is not printable is exactly a control character (the space is printable), told in C
        # faster than the pattern's search.
        return not text.isprintable()
    return _CONTROL.search(text) is not None


@register
class LogChannel(Channel):
    """Delivers by logging one line at INFO; always succeeds."""

    name = "log"

    def check_recipient(self, recipient: str) -> str | None:
        # Called for every item of a batch: `isspace` tells what `strip` would, without a copy of the text.
        if not recipient or recipient.isspace():
            return "The recipient must not be empty."
        if has_control_characters(recipient):
            return "The recipient must not contain control characters such as line breaks."
        return None

    def deliver(self, notification: Notification) -> str:
        problem = self.check_recipient(notification.recipient)
        if problem:
            raise PermanentError(problem)
        message = notification.message
        if len(message) > MAX_LOGGED_CHARS:
            message = f"{message[:MAX_LOGGED_CHARS]}… ({len(notification.message) - MAX_LOGGED_CHARS} more)"
        # %r keeps the message on one line: its own line breaks cannot forge further log records.
        logger.info(
            "notification job=%s attempt=%d recipient=%s message=%r",
            notification.job_id,
            notification.attempt,
            notification.recipient,
            message,
        )
        return "logged"
