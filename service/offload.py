"""Sync work off the event loop: the ledger's SQLAlchemy calls and redis-py's round trips run on a pool of threads
while the loop keeps answering (`/healthz` among them) and reading the next requests."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from inspect import iscoroutinefunction
from typing import Any, TypeVar

import falcon

from service.bodies import MAX_BODY_BYTES

T = TypeVar("T")

#: The most of a threaded responder's body read before it runs: the largest limit among them (a destination's
#: limits; the dashboard's forms take less), plus one byte to tell "too large" apart.
PREFETCH_BYTES = MAX_BODY_BYTES + 1


class Offload:
    """Runs blocking calls on `threads` threads of its own; each call carries the caller's context (a trace)."""

    def __init__(self, threads: int, name: str = "wjp-offload") -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)

    async def __call__(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)


class Threaded:
    """`resource` served from the loop: its coroutine responders as they are, each plain one on `offload`'s threads
    after its body (if any) has been read into `req.context.body`. The plain ones are the rare routes (dashboard,
    destinations, reads, cancel and retry, metrics): their code stays as it is, and the loop stays free meanwhile.
    Its other attributes are the resource's, for the middleware that reads them."""

    def __init__(self, resource: object, offload: Offload) -> None:
        self.resource = resource
        for name in dir(resource):
            responder = getattr(resource, name)
            if name.startswith("on_") and callable(responder):
                setattr(self, name, responder if iscoroutinefunction(responder) else _threaded(responder, offload))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.resource, name)


def _threaded(responder: Callable[..., None], offload: Offload) -> Callable[..., Any]:
    async def respond(req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
        if req.method in ("POST", "PUT", "PATCH"):
            req.context.body = await req.stream.read(PREFETCH_BYTES)
        await offload(responder, req, resp, **params)

    return respond
