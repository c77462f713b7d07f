"""Whether a claim is on its way to a worker process's ledger batcher, which a success waits for only then."""

from __future__ import annotations

import threading
from queue import Queue
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware


class _Holding(threading.local):
    message: bool = False


class ClaimsComing(Middleware):
    """Says whether this process will claim soon: a message waits in the worker's work queue for a thread (the one
    that just delivered takes it at once when all are busy), or a thread has taken a message and not yet claimed
    its job. A success written while no claim is coming is written at once instead of lingering for nothing.

    Registered on the broker beside the actor (`actors.actor.declare_actor`); the actor's thread says `claimed`
    as it hands its claim to the batcher, and a message that never claims (dropped, a callback's) stops counting
    once it is processed."""

    def __init__(self) -> None:
        self._work_queue: Queue[Any] | None = None
        self._holding = 0
        self._lock = threading.Lock()
        self._current = _Holding()

    def __call__(self) -> bool:
        work_queue = self._work_queue
        return self._holding > 0 or (work_queue is not None and not work_queue.empty())

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._work_queue = worker.work_queue

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        self._current.message = True
        with self._lock:
            self._holding += 1

    def claimed(self) -> None:
        """This thread's message is about to claim (or will not): it no longer counts as a claim on its way."""
        if self._current.message:
            self._current.message = False
            with self._lock:
                self._holding -= 1

    def after_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.Message, *, result: object = None, exception: Any = None
    ) -> None:
        self.claimed()

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        self.claimed()
