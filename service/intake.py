"""Intake in groups: the POSTs one API process has read at the same moment share one INSERT and one Redis trip."""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from queue import Empty, SimpleQueue

from actors import tracing
from actors.batching import MAX_BATCH
from ledger import intake
from ledger.database import Database
from ledger.errors import LedgerUnavailable
from ledger.intake import Accepting, Intake, IntakeResult
from ledger.transitions import Dispatch
from service import metrics
from service.offload import Offload, answer_from_thread

log = logging.getLogger("wjp.api")

#: A request on its way to the group thread: the item, the loop that waits for it and its answer there.
_Waiting = tuple[Accepting, asyncio.AbstractEventLoop, "asyncio.Future[IntakeResult | None]"]


class GroupIntake:
    """Accepts requests through one shared statement (group commit), then sends the new jobs' messages in one
    pipeline before any of them is answered: each 202 still means "committed and sent".

    The group runs on a thread of its own, which keeps its connection (`Database.run(kept=True)`), so the loop
    stays free meanwhile. The requests a loop reads in one pass go to that thread together; the thread takes as
    one group everything that came while its last group was in the database (at most MAX_BATCH), so commits and
    round trips per request shrink as the load grows, and a busy thread takes the next group without being woken
    (bench/README.md).
    """

    def __init__(self, database: Database, dispatch: Callable[[list[Dispatch]], None], offload: Offload) -> None:
        self.database = database
        self.dispatch = dispatch
        self.offload = offload
        self._queue: SimpleQueue[list[_Waiting]] = SimpleQueue()
        self._thread_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # A process serves from one loop; tests' clients may run one per thread, each with its own pass.
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pass] = weakref.WeakKeyDictionary()

    async def accept(self, item: Accepting) -> IntakeResult:
        """Record `item` unless its key is known, and send its message if it is due; see `intake.accept`."""
        with tracing.carrying(item.job_id):  # its spans, whichever thread makes them, are the request's children
            loop = asyncio.get_running_loop()
            this_pass = self._loops.get(loop)
            if this_pass is None:
                this_pass = self._loops[loop] = _Pass(self._send)
            result = await this_pass.submit(item, loop)
            if result is not None:
                return result
            # Its key was taken (or the group failed as a whole): the replay, mismatch or rare creation alone.
            return await self.offload(self._accept_alone, item)

    def _accept_alone(self, item: Accepting) -> IntakeResult:
        result = self.database.run(
            lambda conn: intake.accept(
                conn, item.request, now=item.now, dispatch_now=item.dispatch_now, job_id=item.job_id
            )
        )
        if result.outcome is Intake.CREATED and result.dispatch_seq:
            self.dispatch([dispatch_of(result)])
        metrics.count_intake(result.outcome.value)
        return result

    def accept_group(self, group: list[Accepting]) -> list[IntakeResult | None]:
        """One statement for `group`, then one send for its new jobs; None for each item when the statement as a
        whole failed for a reason other than an outage (each then goes again on its own)."""
        try:
            with tracing.each("wjp.ledger.write", group):
                results = self.database.run(lambda conn: intake.accept_many(conn, group), kept=True)
        except LedgerUnavailable:
            raise
        except Exception:
            # One request's value the ledger refuses fails the statement for all: each goes again on its own,
            # so that only that one fails.
            log.debug("a group of %d requests failed; accepting them one by one", len(group), exc_info=True)
            return [None] * len(group)
        answered = [result for result in results if result is not None]
        self.dispatch([dispatch_of(result) for result in answered if result.dispatch_seq])
        # Counted here, once per outcome and group and off the loop: a count in the API's multiprocess registry
        # costs ~6 µs.
        for outcome, count in Counter(result.outcome for result in answered).items():
            metrics.count_intake(outcome.value, count)
        return results

    def _send(self, waiting: list[_Waiting]) -> None:
        """Hand a pass's requests to the group thread (started on first use): a put wakes it only when it waits."""
        if self._thread is None:
            with self._thread_lock:
                if self._thread is None:
                    # A daemon: when the process ends it waits for nothing (a graceful stop has answered every
                    # request before that, so the thread waits for work, holding no statement).
                    self._thread = threading.Thread(target=self._serve, name="wjp-intake", daemon=True)
                    self._thread.start()
        self._queue.put(waiting)

    def _serve(self) -> None:
        """The group thread: one group at a time, of everything queued since the last (at most MAX_BATCH)."""
        held: list[_Waiting] = []
        while True:
            if not held:
                held = self._queue.get()
            while len(held) < MAX_BATCH:
                try:
                    held += self._queue.get_nowait()
                except Empty:
                    break
            group, held = held[:MAX_BATCH], held[MAX_BATCH:]
            try:
                outcome: list[IntakeResult | None] | BaseException = self.accept_group([w[0] for w in group])
            except BaseException as exc:  # each request waiting on it is answered with it; the thread goes on
                outcome = exc
            _answer(group, outcome)


def _answer(group: list[_Waiting], outcome: list[IntakeResult | None] | BaseException) -> None:
    """Wake each loop of the group once, with its requests' results (or the group's error)."""
    failed = isinstance(outcome, BaseException)
    answer_from_thread((loop, answer, outcome if failed else outcome[i]) for i, (_, loop, answer) in enumerate(group))


class _Pass:
    """The requests one event loop reads in one pass of its callbacks: sent to the group thread together, at the
    end of that pass. (It holds no reference to its loop, the key it is kept under.)"""

    def __init__(self, send: Callable[[list[_Waiting]], None]) -> None:
        self.send = send
        self.waiting: list[_Waiting] = []

    def submit(self, item: Accepting, loop: asyncio.AbstractEventLoop) -> asyncio.Future[IntakeResult | None]:
        answer: asyncio.Future[IntakeResult | None] = loop.create_future()
        if not self.waiting:
            loop.call_soon(self._flush)
        self.waiting.append((item, loop, answer))
        return answer

    def _flush(self) -> None:
        waiting, self.waiting = self.waiting, []
        self.send(waiting)


def dispatch_of(result: IntakeResult) -> Dispatch:
    assert result.next_attempt_at is not None
    return Dispatch(result.job_id, result.dispatch_seq, result.next_attempt_at, result.destination)
