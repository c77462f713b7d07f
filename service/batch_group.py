"""Batch intake in groups: the batches one API process reads while its last group is in the ledger share one
statement, one commit and one Redis round trip."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable
from queue import Empty, SimpleQueue

from actors import tracing
from ledger.errors import LedgerUnavailable
from ledger.intake import Accepting, IntakeResult
from service.offload import answer_from_thread

log = logging.getLogger("wjp.api")

#: What accepts a group: one scope's items, accepted as if they had come one after the other.
_Accept = Callable[[list[Accepting]], list[IntakeResult]]
#: A batch on its way to the group thread: who accepts it, its items, the loop that waits for it and its answer there.
_Waiting = tuple[_Accept, list[Accepting], asyncio.AbstractEventLoop, "asyncio.Future[list[IntakeResult]]"]
#: What a batch is answered with: its results, or the error that kept it from the ledger.
_Outcome = list[IntakeResult] | BaseException


class BatchGroups:
    """Runs `accept` (one scope's items, accepted as if they had come one after the other) for the batches of one
    process, one group at a time on a thread of its own: everything that came while the last group was in the
    ledger, up to `max_items`, goes in one call. Under load a batch of 100 thus stops paying a statement, a commit
    and a Redis round trip of its own, about a quarter of its CPU (bench/README.md, 2026-12-04 15:51); and the
    process has one batch statement in the ledger at a time, not one per offload thread, which spares PostgreSQL
    the contention of many inserters on the same index pages.

    Concurrent batches in one group are answered as if the earlier had come first, as two requests racing are."""

    def __init__(self, accept: _Accept, max_items: int) -> None:
        self._accept = accept
        self._max_items = max_items
        self._queue: SimpleQueue[_Waiting | None] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()
        # Its thread ends with it (a test suite makes many apps), as the offload threads do: the thread holds only
        # the queue, and each batch brings its `accept`.
        weakref.finalize(self, self._queue.put, None)

    async def __call__(self, batch: list[Accepting]) -> list[IntakeResult]:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[IntakeResult]] = loop.create_future()
        if self._thread is None:
            self._start()
        with contextlib.ExitStack() as carried:
            if tracing.enabled():  # the spans the group makes for these jobs are this request's children
                for item in batch:
                    carried.enter_context(tracing.carrying(item.job_id))
            self._queue.put((self._accept, batch, loop, answer))
            return await answer

    def _start(self) -> None:
        with self._starting:
            if self._thread is None:
                # A daemon, as the offload threads: a graceful stop has answered every request before the end.
                args = (self._queue, self._max_items)
                self._thread = threading.Thread(target=_serve, args=args, name="wjp-batch", daemon=True)
                self._thread.start()


def _serve(queue: SimpleQueue[_Waiting | None], max_items: int) -> None:
    """The group thread: one group at a time, of everything queued since the last (at most `max_items` items),
    until its `BatchGroups` is gone. Between groups it holds nothing of theirs, so that an app can go."""
    held: list[_Waiting] = []
    while True:
        if not held:
            waiting = queue.get()
            if waiting is None:
                return
            held = [waiting]
            del waiting
        held = _serve_one(queue, held, max_items)


def _serve_one(queue: SimpleQueue[_Waiting | None], held: list[_Waiting], max_items: int) -> list[_Waiting]:
    """Answer the next group: what is held and what has come since, up to `max_items` items; the rest."""
    size = sum(len(waiting[1]) for waiting in held)
    while size < max_items:
        try:
            waiting = queue.get_nowait()
        except Empty:
            break
        if waiting is None:
            queue.put(None)  # the thread ends once what is held is answered
            break
        held.append(waiting)
        size += len(waiting[1])
    group, rest = _first_items(held, max_items)
    for same_scope in _by_scope(group):
        _answer(same_scope, _outcomes(same_scope))
    return rest


def _outcomes(group: list[_Waiting]) -> list[_Outcome]:
    """Each batch's results from one call; from a call per batch when the group's failed otherwise than by an outage
    (one batch's value the ledger refuses then fails only that batch)."""
    accept = group[0][0]
    try:
        results = accept([item for _, batch, _, _ in group for item in batch])
    except LedgerUnavailable as exc:
        return [exc] * len(group)
    except Exception as exc:
        if len(group) == 1:
            return [exc]
        log.debug("a group of %d batches failed; accepting them one by one", len(group), exc_info=True)
        return [_alone(accept, batch) for _, batch, _, _ in group]
    outcomes: list[_Outcome] = []
    start = 0
    for _, batch, _, _ in group:
        outcomes.append(results[start : start + len(batch)])
        start += len(batch)
    return outcomes


def _alone(accept: _Accept, batch: list[Accepting]) -> _Outcome:
    try:
        return accept(batch)
    except Exception as exc:
        return exc


def _first_items(held: list[_Waiting], most: int) -> tuple[list[_Waiting], list[_Waiting]]:
    """The batches that come first and hold at most `most` items between them (the first one whatever its size),
    and the rest."""
    size = len(held[0][1])
    for count, waiting in enumerate(held[1:], start=1):
        size += len(waiting[1])
        if size > most:
            return held[:count], held[count:]
    return held, []


def _by_scope(group: list[_Waiting]) -> list[list[_Waiting]]:
    """The group's batches by producer (an idempotency key is one producer's), in their order."""
    scopes: dict[str, list[_Waiting]] = {}
    for waiting in group:
        scopes.setdefault(waiting[1][0].request.scope, []).append(waiting)
    return list(scopes.values())


def _answer(group: list[_Waiting], outcomes: list[_Outcome]) -> None:
    answer_from_thread((loop, answer, outcome) for (_, _, loop, answer), outcome in zip(group, outcomes, strict=True))
