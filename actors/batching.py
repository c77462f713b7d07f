"""Group commit for threads: concurrent requests share one ledger statement."""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")

#: Most requests one statement carries; bounds the statement's size and its row locks.
MAX_BATCH = 64

log = logging.getLogger("wjp.batching")


class _Waiter(Generic[Request, Result]):
    """One submitted request: its thread sleeps on `done` (held from birth) until the batch thread releases it.
    A bare lock and a C queue: a `Future` and a `Condition` per request cost the batching a tenth of its gain.
    A posted request has no `done`: nobody waits for it. A flush marker has no request: it is released once
    everything queued before it has run."""

    __slots__ = ("answered", "done", "error", "request", "result")

    def __init__(self, request: Request, *, waited: bool = True) -> None:
        self.request = request
        #: Answered by `Batcher.answer_now` while its batch still ran: the batch's outcome is no longer its own.
        self.answered = False
        self.done: threading.Lock | None = None
        if waited:
            self.done = threading.Lock()
            self.done.acquire()
        self.result: Result | None = None
        self.error: BaseException | None = None


#: The request of a flush marker.
_FLUSH: Any = object()
#: The request of a wake-up: a rider was posted while the batch thread slept with no deadline.
_NUDGE: Any = object()


class Batcher(Generic[Request, Result]):
    """Runs `run_batch` on everything submitted meanwhile, from one thread of its own. It answers each request
    with a result, or with an exception to raise in that request's thread alone.

    No request that someone waits for waits for company: it runs at once. Posted requests alone wait up to
    `linger` seconds for company to share their statement: for the next request, whatever it is, or, given
    `coming`, for as long as it says a request someone waits for is on its way (and not at all when none is).
    Under load, requests that arrive while a batch is in the database form the next batch, so the statements
    (and commits) per job shrink as the load grows. The thread starts on first use, so it belongs to the process
    that uses it (Dramatiq forks).

    A request posted with `wait` is a rider: it wakes nobody, and goes with the next batch that someone waits for,
    or once it has waited `wait` seconds, with whatever batch runs then (alone if none).

    `run_batch` may answer a request before the rest of its batch is done (`answer_now`): its thread goes on at once.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Request]], list[Result | BaseException]],
        name: str,
        *,
        linger: float = 0.0,
        coming: Callable[[], bool] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._name = name
        self._linger = linger
        self._coming = coming
        self._waiting: queue.SimpleQueue[_Waiter[Request, Result]] = queue.SimpleQueue()
        #: Riders, with when each must go at the latest (`post` with `wait`), oldest first.
        self._riders: collections.deque[tuple[float, _Waiter[Request, Result]]] = collections.deque()
        #: The batch thread sleeps until the next request, with no deadline: a new rider must wake it.
        self._sleeping = False
        self._starting = threading.Lock()
        self._thread: threading.Thread | None = None
        #: The batch `run_batch` is running (batch thread only), for `answer_now`.
        self._running: list[_Waiter[Request, Result]] = []

    def submit(self, request: Request) -> Result:
        """Wait for the batch holding `request` and return its result, or raise what the batch raised."""
        waiter = self._enqueue(request, waited=True)
        waiter.done.acquire()  # type: ignore[union-attr]
        if waiter.error is not None:
            raise waiter.error
        return waiter.result  # type: ignore[return-value]

    def post(self, request: Request, *, wait: float = 0.0) -> None:
        """Queue `request` for the next batch without waiting for it: `run_batch` owns what becomes of it
        (a batch that raises anyway is logged). With `wait`, it rides with the next batch someone waits for, within
        `wait` seconds."""
        if not wait:
            self._enqueue(request, waited=False)
            return
        if self._thread is None or not self._thread.is_alive():
            self._start()
        self._riders.append((time.monotonic() + wait, _Waiter(request, waited=False)))
        if self._sleeping:  # read after the append: the thread reads the riders after raising the flag
            self._waiting.put(_Waiter(_NUDGE, waited=False))

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until everything submitted or posted so far has run; say whether it has."""
        if self._thread is None:
            return True
        marker = self._enqueue(_FLUSH, waited=True)
        return marker.done.acquire(timeout=timeout)  # type: ignore[union-attr]

    def answer_now(self, index: int, result: Result) -> None:
        """From `run_batch`: answer request `index` of its batch at once, not when the whole batch is done (its
        entry in what `run_batch` returns, or the batch's exception, is then not its answer). Called from any other
        thread (`run_batch` run directly), it does nothing: the returned list answers."""
        if threading.current_thread() is not self._thread:
            return
        waiter = self._running[index]
        if waiter.answered:
            return
        waiter.answered = True
        waiter.result = result
        if waiter.done is not None:
            waiter.done.release()

    def _enqueue(self, request: Request, *, waited: bool) -> _Waiter[Request, Result]:
        if self._thread is None or not self._thread.is_alive():
            self._start()
        waiter: _Waiter[Request, Result] = _Waiter(request, waited=waited)
        self._waiting.put(waiter)
        return waiter

    def _start(self) -> None:
        with self._starting:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while True:
            batch = self._take()
            self._gather(batch)
            if self._linger:
                self._wait_for_company(batch)
            markers = [waiter for waiter in batch if waiter.request is _FLUSH]
            self._board(batch, everyone=bool(markers))
            batch = [waiter for waiter in batch if waiter.request is not _FLUSH and waiter.request is not _NUDGE]
            if batch:
                self._run(batch)
            for marker in markers:
                marker.done.release()  # type: ignore[union-attr]

    def _take(self) -> list[_Waiter[Request, Result]]:
        """The next request, or none once the oldest rider is due."""
        if not self._riders:
            self._sleeping = True
            if not self._riders:  # none was posted before the flag went up
                try:
                    return [self._waiting.get()]
                finally:
                    self._sleeping = False
            self._sleeping = False
        try:
            return [self._waiting.get(timeout=max(0.0, self._riders[0][0] - time.monotonic()))]
        except queue.Empty:
            return []

    def _board(self, batch: list[_Waiter[Request, Result]], *, everyone: bool) -> None:
        """Riders join `batch` if someone waits for it (or a flush, `everyone`), or once the oldest is due."""
        if not self._riders:
            return
        if not everyone and all(waiter.done is None for waiter in batch) and self._riders[0][0] > time.monotonic():
            return
        while self._riders and len(batch) < MAX_BATCH:
            batch.append(self._riders.popleft()[1])

    def _wait_for_company(self, batch: list[_Waiter[Request, Result]]) -> None:
        """While nobody waits for `batch`, let the next request join it, or with `coming`, every request until one
        someone waits for carries them all along, for as long as it is on its way (`linger` seconds at most)."""
        deadline = time.monotonic() + self._linger
        while len(batch) < MAX_BATCH and all(waiter.done is None for waiter in batch):
            if self._coming is not None and not self._coming():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                batch.append(self._waiting.get(timeout=remaining))
            except queue.Empty:
                return
            self._gather(batch)
            if self._coming is None:
                return

    def _gather(self, batch: list[_Waiter[Request, Result]]) -> None:
        while len(batch) < MAX_BATCH:
            try:
                batch.append(self._waiting.get_nowait())
            except queue.Empty:
                return

    def _run(self, batch: list[_Waiter[Request, Result]]) -> None:
        self._running = batch
        try:
            results = self._run_batch([waiter.request for waiter in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self._name}: {len(results)} results for {len(batch)} requests")
        except BaseException as exc:  # every waiter must hear of it, whatever it is
            posted = 0
            for waiter in batch:
                if waiter.answered:
                    continue
                waiter.error = exc
                if waiter.done is None:
                    posted += 1
                else:
                    waiter.done.release()
            if posted:
                log.error("%s: a batch failed with %d posted requests in it", self._name, posted, exc_info=exc)
            return
        finally:
            self._running = []
        for waiter, result in zip(batch, results, strict=True):
            if waiter.answered:
                continue
            if isinstance(result, BaseException):
                waiter.error = result
                if waiter.done is None:
                    log.error("%s: a posted request failed", self._name, exc_info=result)
            else:
                waiter.result = result
            if waiter.done is not None:
                waiter.done.release()
