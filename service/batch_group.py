"""Batch intake in groups: the batches one API process reads while its last group is in the ledger share one
statement, one commit and one Redis round trip."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from queue import Empty, SimpleQueue

from actors import tracing
from ledger.errors import LedgerUnavailable
from ledger.intake import Accepting, IntakeResult

log = logging.getLogger("wjp.api")

#: A batch on its way to the group thread: its items, the loop that waits for it and its answer there.
_Waiting = tuple[list[Accepting], asyncio.AbstractEventLoop, "asyncio.Future[list[IntakeResult]]"]
#: What a batch is answered with: its results, or the error that kept it from the ledger.
_Outcome = list[IntakeResult] | BaseException


class BatchGroups:
    """Runs `accept` (one scope's items, accepted as if they had come one after the other) for the batches of one
    process, one group at a time on a thread of its own: everything that came while the last group was in the
    ledger, up to `max_items`, goes in one call. Under load a batch of 100 thus stops paying a statement, a commit
    and a Redis round trip of its own, which cost more than its items' rows (bench/README.md, 2026-12-04 16:00);
    and the process has one batch statement in the ledger at a time, not one per offload thread, which spares
    PostgreSQL the contention of many inserters on the same index pages.

    Concurrent batches in one group are answered as if the earlier had come first, as two requests racing are."""

    def __init__(self, accept: Callable[[list[Accepting]], list[IntakeResult]], max_items: int) -> None:
        self._accept = accept
        self._max_items = max_items
        self._queue: SimpleQueue[_Waiting] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    async def __call__(self, batch: list[Accepting]) -> list[IntakeResult]:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[IntakeResult]] = loop.create_future()
        if self._thread is None:
            self._start()
        with contextlib.ExitStack() as carried:
            if tracing.enabled():  # the spans the group makes for these jobs are this request's children
                for item in batch:
                    carried.enter_context(tracing.carrying(item.job_id))
            self._queue.put((batch, loop, answer))
            return await answer

    def _start(self) -> None:
        with self._starting:
            if self._thread is None:
                # A daemon, as the offload threads: a graceful stop has answered every request before the end.
                self._thread = threading.Thread(target=self._serve, name="wjp-batch", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        held: list[_Waiting] = []
        while True:
            if not held:
                held.append(self._queue.get())
            size = sum(len(waiting[0]) for waiting in held)
            while size < self._max_items:
                try:
                    waiting = self._queue.get_nowait()
                except Empty:
                    break
                held.append(waiting)
                size += len(waiting[0])
            group, held = _first_items(held, self._max_items)
            for same_scope in _by_scope(group):
                _answer(same_scope, self._outcomes(same_scope))

    def _outcomes(self, group: list[_Waiting]) -> list[_Outcome]:
        """Each batch's results from one call; from a call per batch when the group's failed otherwise than by an
        outage (one batch's value the ledger refuses then fails only that batch)."""
        try:
            results = self._accept([item for batch, _, _ in group for item in batch])
        except LedgerUnavailable as exc:
            return [exc] * len(group)
        except Exception as exc:
            if len(group) == 1:
                return [exc]
            log.debug("a group of %d batches failed; accepting them one by one", len(group), exc_info=True)
            return [self._alone(batch) for batch, _, _ in group]
        outcomes: list[_Outcome] = []
        start = 0
        for batch, _, _ in group:
            outcomes.append(results[start : start + len(batch)])
            start += len(batch)
        return outcomes

    def _alone(self, batch: list[Accepting]) -> _Outcome:
        try:
            return self._accept(batch)
        except Exception as exc:
            return exc


def _first_items(held: list[_Waiting], most: int) -> tuple[list[_Waiting], list[_Waiting]]:
    """The batches that come first and hold at most `most` items between them (the first one whatever its size),
    and the rest."""
    size = len(held[0][0])
    for count, waiting in enumerate(held[1:], start=1):
        size += len(waiting[0])
        if size > most:
            return held[:count], held[count:]
    return held, []


def _by_scope(group: list[_Waiting]) -> list[list[_Waiting]]:
    """The group's batches by producer (an idempotency key is one producer's), in their order."""
    scopes: dict[str, list[_Waiting]] = {}
    for waiting in group:
        scopes.setdefault(waiting[0][0].request.scope, []).append(waiting)
    return list(scopes.values())


def _answer(group: list[_Waiting], outcomes: list[_Outcome]) -> None:
    for (_, loop, answer), outcome in zip(group, outcomes, strict=True):
        with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits for this answer any more
            loop.call_soon_threadsafe(_settle, answer, outcome)


def _settle(answer: asyncio.Future[list[IntakeResult]], outcome: _Outcome) -> None:
    if answer.done():  # its request was cancelled (the client went away)
        return
    if isinstance(outcome, BaseException):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)
