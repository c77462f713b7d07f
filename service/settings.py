"""Settings of the API process: the actors' settings plus what only the API needs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from actors.settings import Settings, rate, text


@dataclass(frozen=True)
class ServiceSettings:
    core: Settings
    #: Bearer token for /internal/* and /metrics; None leaves them open.
    admin_token: str | None
    #: prometheus_client's multiprocess directory (PROMETHEUS_MULTIPROC_DIR), set by `wjp serve`; None: one process.
    metrics_dir: str | None = None
    #: Notifications per second per producer key without a rate of its own (WJP_API_KEY_RATE); None: unlimited.
    api_key_rate: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, redis_url: str | None = None) -> ServiceSettings:
        env = os.environ if env is None else env
        return cls(
            core=Settings.from_env(env, redis_url=redis_url),
            admin_token=text(env, "WJP_ADMIN_TOKEN"),
            metrics_dir=text(env, "PROMETHEUS_MULTIPROC_DIR"),
            api_key_rate=rate(env, "WJP_API_KEY_RATE"),
        )
