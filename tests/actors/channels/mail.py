"""The email tests' notification, channel and received message."""

from __future__ import annotations

import email
import email.policy
import uuid
from email.message import EmailMessage

from actors.channels import ChannelConfig, Notification
from actors.channels.email import EmailChannel
from tests.actors.channels.conftest import SmtpServer

JOB = uuid.UUID("0b0e6a3c-6f55-4a8e-9a57-0d5a1f3f6c11")


def notification(**changes: object) -> Notification:
    fields: dict[str, object] = {
        "job_id": JOB,
        "recipient": "ada@example.com",
        "message": "Your order has shipped.\nIt arrives on Monday.",
    }
    fields.update(changes)
    return Notification(**fields)  # type: ignore[arg-type]


def channel_for(server: SmtpServer, url: str | None = None, **options: object) -> EmailChannel:
    # A short cap keeps a misbehaving test server from stalling the suite.
    config = ChannelConfig(
        smtp_url=url or f"smtp://127.0.0.1:{server.port}", email_from="wjp@example.org", timeout_cap=5
    )
    return EmailChannel(config, **options)  # type: ignore[arg-type]


def received(server: SmtpServer, index: int = -1) -> EmailMessage:
    content = server.handler.envelopes[index].content  # type: ignore[attr-defined]
    return email.message_from_bytes(content, policy=email.policy.default)  # type: ignore[return-value]
