"""Settings of the API process: the actors' settings plus what only the API needs."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from actors.settings import Settings, SettingsError, rate, seconds, text
from service.validation import DEFAULT_MAX_SCHEDULE

#: Shortest admin token accepted on an address other than loopback: a guess must be hopeless.
MIN_EXPOSED_TOKEN_LENGTH = 32
#: What example files and tutorials put in place of a token; never accepted on a public address.
_PLACEHOLDER = re.compile(r"change[-_ ]?me|placeholder|example|^(.)\1*$", re.IGNORECASE)


@dataclass(frozen=True)
class ServiceSettings:
    core: Settings
    #: Bearer token for /internal/* and /metrics; None leaves them open.
    admin_token: str | None
    #: prometheus_client's multiprocess directory (PROMETHEUS_MULTIPROC_DIR), set by `wjp serve`; None: one process.
    metrics_dir: str | None = None
    #: Notifications per second per producer key without a rate of its own (WJP_API_KEY_RATE); None: unlimited.
    api_key_rate: float | None = None
    #: Most seconds `send_at` may lie ahead (WJP_MAX_SCHEDULE).
    max_schedule: float = DEFAULT_MAX_SCHEDULE

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, redis_url: str | None = None) -> ServiceSettings:
        env = os.environ if env is None else env
        return cls(
            core=Settings.from_env(env, redis_url=redis_url),
            admin_token=text(env, "WJP_ADMIN_TOKEN"),
            metrics_dir=text(env, "PROMETHEUS_MULTIPROC_DIR"),
            api_key_rate=rate(env, "WJP_API_KEY_RATE"),
            max_schedule=seconds(env, "WJP_MAX_SCHEDULE", DEFAULT_MAX_SCHEDULE, minimum=1.0),
        )


def check_exposure(host: str, admin_token: str | None) -> None:
    """`wjp serve --host`: anything but loopback exposes /internal/* and /metrics, which then need a real token."""
    if is_loopback(host):
        return
    token = admin_token or ""
    if len(token) < MIN_EXPOSED_TOKEN_LENGTH or _PLACEHOLDER.search(token):
        raise SettingsError(
            f"WJP_ADMIN_TOKEN must be a random token of at least {MIN_EXPOSED_TOKEN_LENGTH} characters "
            f"(not a placeholder) to serve on {host}; or serve on 127.0.0.1"
        )


def is_loopback(host: str) -> bool:
    """Whether a bind address only reaches this machine."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
