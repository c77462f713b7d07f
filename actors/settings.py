"""Settings of the workers and the reconciler, read from the environment in this one place."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from actors.backoff import BackoffPolicy
from actors.channels.base import ChannelConfig
from actors.channels.webhook import decode_secret
from actors.redis_address import SENTINEL_SCHEME, parse_sentinel_url
from ledger.database import normalize_url, without_credentials

#: How often Dramatiq's time limit looks for attempts past their deadline, in ms (its default, 1000, would let
#: an attempt outlive a 2 s visibility timeout); `Settings.attempt_time_limit` allows for it.
TIME_LIMIT_CHECK_MS = 100
#: Shortest visibility timeout. An attempt is cut off by 0.9 of it (`Settings.attempt_time_limit`), leaving a tenth
#: to write its outcome before the reconciler may take the claim back: below 2 s, too little for a write's round trips.
MIN_VISIBILITY_TIMEOUT = 2.0

#: Fewest key bytes of `WJP_WEBHOOK_SECRET` (Standard Webhooks asks for 24 to 64).
MIN_WEBHOOK_KEY_BYTES = 24

DEFAULT_DATABASE_URL = "sqlite:///var/wjp.sqlite3"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class SettingsError(ValueError):
    """A setting has a value the process cannot run with; the message names the variable."""


def text(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = env.get(name, "").strip()
    return value or default


def positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = text(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise SettingsError(f"{name} must be at least 1, got {raw!r}")
    return value


def port(env: Mapping[str, str], name: str) -> int | None:
    """A TCP port number, or None when unset."""
    raw = text(env, name)
    if raw is None:
        return None
    value = positive_int(env, name, 0)
    if value > 65535:
        raise SettingsError(f"{name} must be a port number from 1 to 65535, got {raw!r}")
    return value


def seconds(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    """A duration in seconds, possibly fractional (`0.4`)."""
    raw = text(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value < minimum:
        raise SettingsError(f"{name} must be a number of seconds of at least {minimum:g}, got {raw!r}")
    return value


def flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = text(env, name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def url(env: Mapping[str, str], name: str, schemes: tuple[str, ...], default: str | None = None) -> str | None:
    raw = text(env, name, default)
    if raw is None:
        return None
    try:
        parts = urlsplit(raw)
        well_formed = parts.scheme in schemes and bool(parts.hostname or parts.scheme.startswith("sqlite"))
    except ValueError:  # an unbalanced `[` of an IPv6 host
        well_formed = False
    if not well_formed:
        # Never the URL as given: it may carry a user and a password.
        shown = without_credentials(raw)
        raise SettingsError(f"{name} must be a {' or '.join(s + '://' for s in schemes)} URL, got {shown!r}")
    return raw


def redis_server_url(env: Mapping[str, str]) -> str:
    """One Redis server's URL, or Sentinels' (`redis+sentinel://`), which is checked in full here."""
    raw = text(env, "REDIS_URL", DEFAULT_REDIS_URL)
    if not raw.startswith(f"{SENTINEL_SCHEME}:"):
        return url(env, "REDIS_URL", ("redis", "rediss", "unix", SENTINEL_SCHEME), DEFAULT_REDIS_URL)
    try:
        parse_sentinel_url(raw)
    except ValueError as exc:
        raise SettingsError(f"REDIS_URL: {exc}") from None
    return raw


def database_url(env: Mapping[str, str]) -> str:
    raw = text(env, "DATABASE_URL", DEFAULT_DATABASE_URL)
    try:
        return normalize_url(raw)
    except ValueError as exc:
        raise SettingsError(f"DATABASE_URL: {exc}") from None


def fraction(env: Mapping[str, str], name: str, default: float) -> float:
    """A share: more than 0, at most 1."""
    raw = text(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number above 0 and at most 1, got {raw!r}") from None
    if not 0 < value <= 1:
        raise SettingsError(f"{name} must be a number above 0 and at most 1, got {raw!r}")
    return value


def rate(env: Mapping[str, str], name: str) -> float | None:
    """Events per second, above 0; None when unset (unlimited)."""
    raw = text(env, name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of events per second, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name} must be a number of events per second above 0, got {raw!r}")
    return value


def whole(env: Mapping[str, str], name: str, default: int) -> int:
    """A whole number of at least 0."""
    raw = text(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise SettingsError(f"{name} must be at least 0, got {raw!r}")
    return value


def check_webhook_secret(secret: str) -> None:
    """A signing key a receiver can trust: the Standard Webhooks form, and long enough not to be guessed."""
    if not secret.startswith("whsec_"):
        raise SettingsError("WJP_WEBHOOK_SECRET must have the form whsec_<base64 key>")
    try:
        key = decode_secret(secret)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    if len(key) < MIN_WEBHOOK_KEY_BYTES:
        raise SettingsError(
            f"WJP_WEBHOOK_SECRET must hold at least {MIN_WEBHOOK_KEY_BYTES} key bytes, got {len(key)} "
            "(make one with: echo whsec_$(openssl rand -base64 32))"
        )


@dataclass(frozen=True)
class FlowSettings:
    """Flow control per destination (SPEC "Destinations and flow control"): the defaults of its limits, the
    circuit breaker and how long a job may wait on its destination."""

    #: Whether the workers apply it at all (off: every job goes straight to its claim, as before destinations).
    enabled: bool = True
    #: Most attempts to one destination in flight at once, fleet-wide, unless an operator set another.
    concurrency: int = 20
    #: Most share of one worker process's threads that one destination may hold.
    share: float = 0.5
    #: Most attempts started per second per destination; None: unlimited.
    rate: float | None = None
    #: Throttling answers per job that give their attempt back; past them they count as transient errors.
    max_throttles: int = 20
    #: Consecutive transient failures of a destination that open its circuit.
    breaker_threshold: int = 10
    #: Seconds a circuit stays open before its probe, doubling on each reopening up to `WJP_BACKOFF_MAX`.
    breaker_cooldown: float = 30.0
    #: Most seconds a job may wait deferred, in all, before it is FAILED.
    max_deferral: float = 86400.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FlowSettings:
        return cls(
            enabled=flag(env, "WJP_FLOW_CONTROL", True),
            concurrency=positive_int(env, "WJP_DESTINATION_CONCURRENCY", 20),
            share=fraction(env, "WJP_DESTINATION_SHARE", 0.5),
            rate=rate(env, "WJP_DESTINATION_RATE"),
            max_throttles=whole(env, "WJP_MAX_THROTTLES", 20),
            breaker_threshold=positive_int(env, "WJP_BREAKER_THRESHOLD", 10),
            breaker_cooldown=seconds(env, "WJP_BREAKER_COOLDOWN", 30.0, minimum=0.1),
            max_deferral=seconds(env, "WJP_MAX_DEFERRAL", 86400.0, minimum=1.0),
        )


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    queue: str
    max_attempts: int
    backoff: BackoffPolicy
    visibility_timeout: float
    reconcile_interval: float
    reconcile_grace: float
    channels: ChannelConfig
    #: Where each worker host serves its own /metrics (Dramatiq's Prometheus exporter); None: not served.
    worker_metrics_port: int | None = None
    #: Whether the ledger's statements may be prepared on the server: off behind a pooler in transaction mode that
    #: cannot track them (PgBouncer before 1.21, or without max_prepared_statements).
    prepared_statements: bool = True
    flow: FlowSettings = FlowSettings()

    @property
    def schedule_horizon(self) -> float:
        """Jobs due within this many seconds (a `send_at`, a retry) wait in Redis's delay queue; later ones wait
        in the ledger until a reconciler pass comes close enough to their time, so that the delay queue, read in
        FIFO order, holds nothing far off for what is due soon to wait behind. Two intervals: every pass sees
        each job within it at least once before it is due."""
        return max(30.0, 2 * self.reconcile_interval)

    @property
    def attempt_time_limit(self) -> float:
        """Seconds after which an attempt is cut off: always inside the visibility timeout, however short, since
        Dramatiq's time limit strikes up to one check interval late and the outcome must be written after it."""
        return self.visibility_timeout * 0.9 - TIME_LIMIT_CHECK_MS / 1000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, redis_url: str | None = None) -> Settings:
        """Read and validate every setting; raise `SettingsError` naming the first bad one."""
        env = os.environ if env is None else env
        visibility = seconds(env, "WJP_VISIBILITY_TIMEOUT", 60.0, minimum=MIN_VISIBILITY_TIMEOUT)
        queue = text(env, "WJP_QUEUE", "notifications")
        if not queue.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise SettingsError(f"WJP_QUEUE may hold letters, digits, '_', '-' and '.', got {queue!r}")
        webhook_secret = text(env, "WJP_WEBHOOK_SECRET")
        if webhook_secret is not None:
            check_webhook_secret(webhook_secret)
        return cls(
            database_url=database_url(env),
            redis_url=redis_url or redis_server_url(env),
            queue=queue,
            max_attempts=positive_int(env, "WJP_MAX_ATTEMPTS", 5),
            backoff=BackoffPolicy(
                initial=seconds(env, "WJP_BACKOFF_INITIAL", 2.0),
                maximum=seconds(env, "WJP_BACKOFF_MAX", 3600.0),
                jitter=seconds(env, "WJP_BACKOFF_JITTER", 1.0),
            ),
            visibility_timeout=visibility,
            reconcile_interval=seconds(env, "WJP_RECONCILE_INTERVAL", 15.0, minimum=0.05),
            reconcile_grace=seconds(env, "WJP_RECONCILE_GRACE", 10.0),
            channels=ChannelConfig(
                timeout_cap=visibility * 0.75,
                smtp_url=url(env, "WJP_SMTP_URL", ("smtp", "smtps")),
                email_from=text(env, "WJP_EMAIL_FROM", "notifications@localhost"),
                outbox_dir=Path(text(env, "WJP_OUTBOX_DIR", "var/outbox")).resolve(),
                webhook_timeout=seconds(env, "WJP_WEBHOOK_TIMEOUT", 10.0, minimum=0.1),
                webhook_secret=webhook_secret,
                webhook_allow_private=flag(env, "WJP_WEBHOOK_ALLOW_PRIVATE"),
                sms_url=url(env, "WJP_SMS_URL", ("http", "https")),
                sms_account=text(env, "WJP_SMS_ACCOUNT"),
                sms_token=text(env, "WJP_SMS_TOKEN"),
                sms_from=text(env, "WJP_SMS_FROM"),
                extra_modules=tuple(m.strip() for m in text(env, "WJP_CHANNEL_MODULES", "").split(",") if m.strip()),
            ),
            worker_metrics_port=port(env, "WJP_WORKER_METRICS_PORT"),
            prepared_statements=flag(env, "WJP_PREPARED_STATEMENTS", True),
            flow=FlowSettings.from_env(env),
        )
