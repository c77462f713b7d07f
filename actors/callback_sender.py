"""The sender of the status callbacks the ledger armed claimed for the worker that finished their jobs (migration
0010): a few sender threads, each admitting the next group itself when it comes free, that POST them and leave
their outcomes to ride the worker's ledger batches."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from actors.broker import Dispatcher
from ledger.claims import ClaimedJob, Finished
from ledger.timestamps import utcnow

if TYPE_CHECKING:
    from actors.callbacks import CallbackDelivery

log = logging.getLogger("wjp.callbacks")

#: Threads of a worker process that POST the callbacks of the jobs it finished, without flow control (with it: as
#: many as one destination may hold threads of the process).
SENDERS = 4
#: Longest a sender about to admit waits for busy senders to come free, so that it admits for them too.
GROUP_LINGER = 0.005
#: What a sender is given to do instead of a callback's task: admit the next group.
_ADMIT = object()


class _Sender:
    """A sender thread's hand-off: it sleeps on `_wake` (held while it has nothing to do) until given work. A bare
    lock, as `batching._Waiter`: a thread pool's queue and a condition per hand-off cost more."""

    __slots__ = ("_wake", "_work")

    def __init__(self) -> None:
        self._wake = threading.Lock()
        self._wake.acquire()
        self._work: object = None

    def give(self, work: object) -> None:
        self._work = work
        self._wake.release()

    def take(self) -> object:
        self._wake.acquire()
        work, self._work = self._work, None
        return work


class ArmedSender:
    """Delivers the callbacks the ledger armed claimed for this worker as it finished their jobs (migration 0010):
    no message and no claim statement. A sender that comes free while callbacks are queued admits the next group
    by their destination's flow control, itself and the idle senders' worth at once, in one request of the worker's
    ledger batch (one gate round trip, shared), hands the others theirs, and POSTs its own; each records its
    callback as a message's attempt is (`CallbackDelivery`), its outcome riding a later ledger batch. A job whose
    success statement did not return its `Finished` (a failure, a success written after a ledger outage) has its
    claim given back to a message. Not `attach`ed (a process with no callback actor), the claims are left for the
    reconciler to take back."""

    def __init__(self, dispatcher: Dispatcher, clock: Callable[[], datetime] = utcnow, threads: int = SENDERS) -> None:
        self.dispatcher = dispatcher
        self.clock = clock
        self.delivery: CallbackDelivery | None = None
        self.threads = threads
        self._queue: deque[tuple[ClaimedJob, Finished | None]] = deque()
        self._pending = 0
        # The queue, the idle senders and whether one is admitting; `flush` waits on it.
        self._changed = threading.Condition()
        self._idle: list[_Sender] = []
        self._admitting = False
        #: The admitting sender waits for busy ones to come free (`GROUP_LINGER`): those that do wake it.
        self._lingering = False
        self._started: list[threading.Thread] = []

    def attach(self, delivery: CallbackDelivery, threads: int) -> None:
        """Deliver through `delivery`, with `threads` senders (before the first `post`)."""
        self.delivery = delivery
        self.threads = threads

    def post(self, jobs: list[ClaimedJob], finished: dict[uuid.UUID, Finished] | None = None) -> None:
        """`jobs`, whose outcome is written, each with a `callback_url`; `finished`: what their success returned."""
        if not jobs:
            return
        with self._changed:
            self._queue.extend((job, (finished or {}).get(job.id)) for job in jobs)
            self._pending += len(jobs)
            if not self._started or not self._started[0].is_alive():  # started in the process that posts (forks)
                self._start()
            admitter = self._next_admitter()
        if admitter is not None:
            admitter.give(_ADMIT)

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for what was posted to be POSTed and its outcome written; whether it was."""
        deadline = time.monotonic() + timeout
        with self._changed:
            if not self._changed.wait_for(lambda: self._pending == 0, timeout):
                return False
        return self.delivery is None or self.delivery.ledger.flush(max(0.0, deadline - time.monotonic()))

    def _start(self) -> None:
        senders = [_Sender() for _ in range(self.threads)]
        self._idle, self._admitting = list(senders), False
        self._started = [threading.Thread(target=self._serve, args=(sender,), name="wjp-callback", daemon=True)
                         for sender in senders]  # fmt: skip
        for thread in self._started:
            thread.start()

    def _next_admitter(self) -> _Sender | None:
        """An idle sender to admit what is queued, unless one is at it already (under `_changed`)."""
        if self._admitting or not self._queue or not self._idle:
            return None
        self._admitting = True
        return self._idle.pop()

    def _serve(self, me: _Sender) -> None:
        work = me.take()
        while True:
            if work is _ADMIT:
                work = self._admit(me)
            else:
                self._run(work)  # type: ignore[arg-type]
                work = self._done(me)
            if work is None:
                work = me.take()

    def _admit(self, me: _Sender) -> Callable[[], None] | None:
        """Admit as many queued callbacks as there are idle senders and this one, in one ledger batch request; hand
        each idle sender its task, and return this one's."""
        with self._changed:
            # A moment for the senders still POSTing to come free: one group, one gate round trip and one ledger batch
            # for as many callbacks as may go at once (an admission each made more batches, and more statements
            # recording deliveries alone: bench/README.md, 2026-12-04 15:51).
            deadline = time.monotonic() + GROUP_LINGER
            while len(self._idle) + 1 < self.threads and len(self._queue) > len(self._idle) + 1:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lingering = True
                self._changed.wait(remaining)
            self._lingering = False
            group = [self._queue.popleft() for _ in range(min(len(self._queue), 1 + len(self._idle)))]
            helpers = [self._idle.pop() for _ in range(max(0, len(group) - 1))]
            if not group:
                self._admitting = False
                self._idle.append(me)
                return None
        tasks: list[Callable[[], None]]
        try:
            if self.delivery is None:
                raise RuntimeError("no status callbacks in this process")
            tasks = self.delivery.admit_claimed(group)
        except Exception as exc:  # their claims stay; the reconciler takes them back once they expire
            log.error("could not send %d status callbacks (%s); the reconciler will", len(group), exc)
            tasks = [_nothing] * len(group)
        with self._changed:
            self._admitting = False
            admitter = self._next_admitter()  # more came while this group was admitted
        if admitter is not None:
            admitter.give(_ADMIT)
        for helper, task in zip(helpers, tasks[1:], strict=True):
            helper.give(task)
        return tasks[0]

    def _done(self, me: _Sender) -> object:
        """After a callback: admit the next group if one is queued and nobody is at it; else wait idle."""
        with self._changed:
            self._pending -= 1
            if self._queue and not self._admitting:
                self._admitting = True
                return _ADMIT
            self._idle.append(me)
            if self._pending == 0 or self._lingering:
                self._changed.notify_all()
            return None

    def _run(self, task: Callable[[], None]) -> None:
        try:
            task()
        except Exception:  # its claim stays; the reconciler takes it back once it expires
            log.exception("a status callback raised unexpectedly")


def _nothing() -> None:
    pass
