"""The channel interface: one class per way of delivering a notification."""

from __future__ import annotations

import functools
import ssl
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@functools.cache
def system_tls_context() -> ssl.SSLContext:
    """A client TLS context trusting the system's CAs, built when a channel first needs it: loading the CAs takes
    tens of ms, which every worker process paid as it started, TLS or not. A context is safe to share."""
    return ssl.create_default_context()


@dataclass(frozen=True)
class Notification:
    """What a channel needs to deliver one attempt of one job."""

    job_id: uuid.UUID
    recipient: str
    message: str
    subject: str | None = None
    metadata: dict[str, Any] | None = None
    attempt: int = 1
    #: The monotonic instant (`time.monotonic()`) the attempt must end by, inside the worker's claim; None when
    #: delivered without a claim. The built-in channels cut their connections there (`actors.channels.deadline`).
    deadline: float | None = None


@dataclass(frozen=True)
class ChannelConfig:
    """Settings shared by the channels; built once from the environment by `actors.settings`."""

    #: Longest one request or socket operation of a channel may wait, in seconds; the attempt's deadline
    #: (`Notification.deadline`) bounds the whole delivery.
    timeout_cap: float = 50.0
    smtp_url: str | None = None
    email_from: str = "notifications@localhost"
    outbox_dir: Path = field(default_factory=lambda: Path("var/outbox"))
    webhook_timeout: float = 10.0
    webhook_secret: str | None = None
    webhook_allow_private: bool = False
    sms_url: str | None = None
    sms_account: str | None = None
    sms_token: str | None = None
    sms_from: str | None = None
    #: Modules imported before the channels are built, so the channels they `@register` are enabled too.
    extra_modules: tuple[str, ...] = ()


class DeliveryError(Exception):
    """A delivery attempt did not succeed; the subclass says whether trying again can help."""


class TransientError(DeliveryError):
    """Worth retrying: timeouts, connection errors, 5xx/408/429, SMTP 4xx."""

    def __init__(self, message: str, *, retry_after: float | None = None, throttled: bool = False) -> None:
        super().__init__(message)
        #: The provider's own Retry-After, in seconds: the next attempt waits at least this long.
        self.retry_after = retry_after
        #: The receiver asked us to slow down (429, a 503 with Retry-After, SMTP 421 or 450/451 about rate): the
        #: attempt gives its place in the budget back, and a Retry-After pauses the whole destination.
        self.throttled = throttled


class PermanentError(DeliveryError):
    """Retrying cannot help: 4xx, SMTP 5xx, a refused or invalid recipient."""


class SetupError(DeliveryError):
    """A failure of our own set-up (credentials, sender address, a channel not configured), not of the receiver:
    producers read a generic sentence in `last_error`, operators the detail in the worker's log."""


class TransientSetupError(SetupError, TransientError):
    """Our set-up failed in a way an operator can fix while the job waits (an SMTP login refused)."""


class PermanentSetupError(SetupError, PermanentError):
    """Our set-up cannot deliver this job at all (its channel is not enabled on the worker)."""


class Channel(ABC):
    """Delivers notifications of one kind. Instances are shared by worker threads."""

    name: ClassVar[str]

    def __init__(self, config: ChannelConfig) -> None:
        self.config = config

    @abstractmethod
    def check_recipient(self, recipient: str) -> str | None:
        """Return why `recipient` cannot be used with this channel, or None when it fits."""

    @abstractmethod
    def deliver(self, notification: Notification) -> str:
        """Deliver one attempt and return a short receipt, or raise a `DeliveryError`."""

    def destination(self, recipient: str) -> str:
        """The key of the party an attempt to `recipient` talks to (SPEC "Destinations and flow control"), for a
        recipient `check_recipient` accepted; a channel that talks to one party is that party: its name."""
        return self.name

    def close(self) -> None:  # noqa: B027 - most channels keep nothing between deliveries
        """Let go of what the channel keeps between deliveries; called once, after the worker's threads stopped."""
