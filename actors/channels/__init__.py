"""The channel registry: every delivery channel by name, and the enabled ones built from a config.

A new channel is one class in its own module, decorated with `@register`, and imported at the
bottom of this file (or, for a channel outside this package, named in `WJP_CHANNEL_MODULES`).
A channel that is only usable with some settings defines a classmethod `enabled(config) -> bool`;
channels without one are always enabled.
"""

from __future__ import annotations

import importlib
from typing import TypeVar

from actors.channels.base import (
    Channel,
    ChannelConfig,
    DeliveryError,
    Notification,
    PermanentError,
    TransientError,
)

__all__ = [
    "REGISTRY",
    "Channel",
    "ChannelConfig",
    "DeliveryError",
    "Notification",
    "PermanentError",
    "TransientError",
    "build_channels",
    "register",
]

#: Every known channel class, by its `name`; filled by `@register` as the modules are imported.
REGISTRY: dict[str, type[Channel]] = {}

C = TypeVar("C", bound=type[Channel])


def register(cls: C) -> C:
    """Add a channel class to `REGISTRY` under its `name`; refuses a second class with the same name."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} needs a non-empty class attribute `name`")
    existing = REGISTRY.get(name)
    # The same class seen again (a module reloaded in a test) replaces itself; another class may not.
    if existing is not None and _path(existing) != _path(cls):
        raise ValueError(f"channel name {name!r} is already taken by {existing.__qualname__}")
    REGISTRY[name] = cls
    return cls


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def build_channels(config: ChannelConfig) -> dict[str, Channel]:
    """Return one instance of every enabled channel, by name.

    Raises:
        ValueError: a channel's settings are incomplete or invalid; the message names the variable.
    """
    for module in config.extra_modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"WJP_CHANNEL_MODULES: cannot import {module!r}: {exc}") from None
    channels: dict[str, Channel] = {}
    for name, cls in REGISTRY.items():
        enabled = getattr(cls, "enabled", None)
        if enabled is None or enabled(config):
            channels[name] = cls(config)
    return channels


# Imported last, for their `@register` side effect: each module imports `register` from here.
from actors.channels import email, log, sms, webhook  # noqa: E402, F401
