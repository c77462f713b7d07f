"""The webhook tests' notification, channel and resolver."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable

from actors.channels import ChannelConfig, Notification
from actors.channels.webhook import WebhookChannel

JOB = uuid.UUID("5f1d7c2e-3b9a-4c60-8f2e-7a3d9b1c0e42")
SECRET = "whsec_" + base64.b64encode(b"a key of thirty-two bytes, really").decode()
#: A name no resolver knows: a request reaching the server under it proves the pinned address was used.
FAKE_HOST = "hooks.example.test"


def notification(url: str, **changes: object) -> Notification:
    fields: dict[str, object] = {
        "job_id": JOB,
        "recipient": url,
        "message": "Grüße — your order has shipped",
        "metadata": {"order": 42, "tags": ["a", "b"]},
        "attempt": 1,
    }
    fields.update(changes)
    return Notification(**fields)  # type: ignore[arg-type]


def channel(*, allow_private: bool = True, secret: str | None = None, **options: object) -> WebhookChannel:
    config = ChannelConfig(webhook_allow_private=allow_private, webhook_secret=secret, webhook_timeout=2)
    return WebhookChannel(config, **options)  # type: ignore[arg-type]


def resolving(table: dict[str, list[str]], calls: list[str] | None = None) -> Callable[[str, int], list[str]]:
    """A resolver answering from `table`, recording each name it is asked for."""

    def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        return table[host]

    return resolve
