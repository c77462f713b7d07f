"""Dramatiq's signals, sent only to the middleware that hook them."""

from __future__ import annotations

from typing import Any

from dramatiq.middleware import Middleware, MiddlewareError


def hooks(middleware: object, name: str) -> bool:
    """Whether `middleware` does something on hook `name`: its class or the object itself defines it, other than
    as Dramatiq's no-op."""
    return name in vars(middleware) or getattr(type(middleware), name, None) is not getattr(Middleware, name, None)


class SignalsToHooks:
    """A broker's `emit_before` and `emit_after` as Dramatiq's, each middleware's hook called in the same order and
    its failure handled alike, but only of the middleware that hook the signal, as they were when added: Dramatiq
    calls every middleware's, mostly its no-op, about ten for each of a job's four signals (bench/README.md,
    2026-12-04 15:51)."""

    middleware: list[Middleware]
    logger: Any

    def add_middleware(self, middleware: Middleware, **where: Any) -> None:
        super().add_middleware(middleware, **where)  # type: ignore[misc]
        self._hooked: dict[str, list[Middleware]] = {}

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        signal = "before_" + signal
        for middleware in self._hooking(signal):
            try:
                getattr(middleware, signal)(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", signal, middleware, exc_info=True)

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        signal = "after_" + signal
        for middleware in reversed(self._hooking(signal)):
            try:
                getattr(middleware, signal)(self, *args, **kwargs)
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", signal, middleware, exc_info=True)

    def _hooking(self, name: str) -> list[Middleware]:
        found = self._hooked.get(name)
        if found is None:
            found = self._hooked[name] = [m for m in self.middleware if hooks(m, name)]
        return found
