"""Sync work off the event loop: the ledger's SQLAlchemy calls and redis-py's round trips run on a pool of threads
while the loop keeps answering (`/healthz` among them) and reading the next requests."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import weakref
from collections.abc import Callable, Iterable
from inspect import iscoroutinefunction
from queue import SimpleQueue
from typing import Any, TypeVar

import falcon

from service.bodies import MAX_BODY_BYTES

T = TypeVar("T")

#: The most of a threaded responder's body read before it runs: the largest limit among them (a destination's
#: limits; the dashboard's forms take less), plus one byte to tell "too large" apart.
PREFETCH_BYTES = MAX_BODY_BYTES + 1


class Offload:
    """Runs blocking calls on up to `threads` threads of its own; each call carries the caller's context (a trace).

    A call reaches a thread through one queue and its outcome comes back to its loop in one `call_soon_threadsafe`:
    `run_in_executor` wraps each call in two futures chained by callbacks, with a lock and a condition, which cost a
    batch request more than its own work on the loop (bench/README.md)."""

    def __init__(self, threads: int, name: str = "wjp-offload") -> None:
        self._size, self._name = threads, name
        self._calls: SimpleQueue[_Call | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._starting = threading.Lock()
        # Its threads end with it (a test suite makes many), as an executor's do: one None each.
        weakref.finalize(self, _stop, self._calls, self._threads)

    async def __call__(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, contextvars.copy_context(), fn, args, kwargs))
        # A call no thread has taken yet: one more thread, up to `threads` (started as they are first needed).
        if len(self._threads) < self._size and self._calls.qsize():
            self._start()
        return await future

    def _start(self) -> None:
        with self._starting:
            if len(self._threads) < self._size:
                # A daemon: a graceful stop has answered every request, so at exit each waits for work, holding
                # nothing.
                name = f"{self._name}_{len(self._threads)}"
                thread = threading.Thread(target=_serve, args=(self._calls,), name=name, daemon=True)
                thread.start()
                self._threads.append(thread)


def _serve(calls: SimpleQueue[_Call | None]) -> None:
    """An offload thread: each call in turn, until its `Offload` is gone."""
    while (call := calls.get()) is not None:
        loop, future, context, fn, args, kwargs = call
        try:
            outcome: tuple[Any, BaseException | None] = (context.run(fn, *args, **kwargs), None)
        except BaseException as exc:  # the caller's to handle, as an executor hands it over
            outcome = (None, exc)
        with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits for this outcome
            loop.call_soon_threadsafe(_settle, future, *outcome)
        del call, loop, future, context, fn, args, kwargs, outcome


def _stop(calls: SimpleQueue[_Call | None], threads: list[threading.Thread]) -> None:
    for _ in threads:
        calls.put(None)


#: A call on its way to a thread: the caller's loop and future, its context, the function and its arguments.
_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", contextvars.Context, Callable[..., Any], tuple, dict]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():  # the request went away meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def answer_from_thread(answers: Iterable[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Any]]) -> None:
    """From a thread: give each `(loop, future, outcome)` its outcome (a result, or an exception to raise) on its loop,
    waking each loop once."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for loop, future, outcome in answers:
        by_loop.setdefault(loop, []).append((future, outcome))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a loop that has closed: nobody waits for these answers any more
            loop.call_soon_threadsafe(_settle_all, settled)


def _settle_all(answers: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in answers:
        if future.done():  # its request was cancelled (the client went away)
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


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
