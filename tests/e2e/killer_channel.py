"""A test-only channel that kills the worker process delivering it, like an out-of-memory kill would."""

from __future__ import annotations

import os
import signal

from actors.channels import Channel, Notification, register


@register
class KillerChannel(Channel):
    name = "killer"

    def check_recipient(self, recipient: str) -> str | None:
        return None

    def deliver(self, notification: Notification) -> str:
        os.kill(os.getpid(), signal.SIGKILL)
        return "unreachable"
