"""The sender of the status callbacks the ledger armed claimed for the worker that finished their jobs (migration
0010): admitted in groups, POSTed from a small pool of threads, recorded with the worker's ledger batches."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

from actors.broker import Dispatcher
from ledger.claims import ClaimedJob, Finished
from ledger.timestamps import utcnow

if TYPE_CHECKING:
    from actors.callbacks import CallbackDelivery

log = logging.getLogger("wjp.callbacks")

#: Threads of a worker process that POST the callbacks of the jobs it finished, without flow control (with it: as
#: many as one destination may hold threads of the process).
SENDERS = 4
#: Longest the admitter waits for busy senders to come free, so that it admits them together.
GROUP_LINGER = 0.005


class ArmedSender:
    """Delivers the callbacks the ledger armed claimed for this worker as it finished their jobs (migration 0010):
    no message and no claim statement. A thread of its own admits them by their destination's flow control, as many
    at once as it has free senders, in one request of the worker's ledger batch (one gate round trip, shared); a
    small pool of senders (never the ledger batcher's thread) POSTs them and records each as a message's attempt is
    (`CallbackDelivery`). A job whose success statement did not return its `Finished` (a failure, a success written
    after a ledger outage) has its claim given back to a message. Not `attach`ed (a process with no callback
    actor), the claims are left for the reconciler to take back."""

    def __init__(self, dispatcher: Dispatcher, clock: Callable[[], datetime] = utcnow, threads: int = SENDERS) -> None:
        self.dispatcher = dispatcher
        self.clock = clock
        self.delivery: CallbackDelivery | None = None
        self.threads = threads
        self._queue: deque[tuple[ClaimedJob, Finished | None]] = deque()
        # The senders' outcomes (gate releases, successes) for the ledger batch: they ride the next admissions' request
        # (one gate round trip and one statement for both), or go on their own once nothing is left to admit.
        self._outcomes: list[Any] = []
        self._free = threads
        self._pending = 0
        self._changed = threading.Condition()
        self._pool: ThreadPoolExecutor | None = None
        self._admitter: threading.Thread | None = None

    def attach(self, delivery: CallbackDelivery, threads: int) -> None:
        """Deliver through `delivery`, with `threads` senders (before the first `post`)."""
        self.delivery = delivery
        self.threads = self._free = threads

    def post(self, jobs: list[ClaimedJob], finished: dict[uuid.UUID, Finished] | None = None) -> None:
        """`jobs`, whose outcome is written, each with a `callback_url`; `finished`: what their success returned."""
        if not jobs:
            return
        with self._changed:
            self._queue.extend((job, (finished or {}).get(job.id)) for job in jobs)
            self._pending += len(jobs)
            self._changed.notify_all()
            if self._admitter is None or not self._admitter.is_alive():  # started in the process that posts (forks)
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="wjp-callback")
                self._admitter = threading.Thread(target=self._admit_forever, name="wjp-callbacks", daemon=True)
                self._admitter.start()

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for what was posted to be POSTed and its outcome written; whether it was."""
        deadline = time.monotonic() + timeout
        with self._changed:
            if not self._changed.wait_for(lambda: self._pending == 0 and not self._outcomes, timeout):
                return False
        return self.delivery is None or self.delivery.ledger.flush(max(0.0, deadline - time.monotonic()))

    def _admit_forever(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: (bool(self._queue) and self._free > 0) or bool(self._outcomes))
                # A moment for the senders still POSTing to come free: one group, one gate round trip and one
                # statement for as many callbacks as may go at once (an admission per callback made the gate a large
                # share of a worker's CPU: bench/README.md, 2026-12-04 07:10). With nothing left to admit, for their
                # outcomes to go together rather than a ledger batch each.
                deadline = time.monotonic() + GROUP_LINGER
                while self._free < self.threads and (len(self._queue) > self._free or not self._queue):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
                group = [self._queue.popleft() for _ in range(min(self._free, len(self._queue)))]
                self._free -= len(group)
                outcomes, self._outcomes = self._outcomes, []
                if not group:  # posted under the lock, so that `flush` finds them queued in the ledger batcher
                    for outcome in outcomes:
                        self.delivery.ledger.post(outcome)  # type: ignore[union-attr]
                    continue
            tasks: list[Callable[[], None]]
            try:
                if self.delivery is None:
                    raise RuntimeError("no status callbacks in this process")
                tasks = self.delivery.admit_claimed(group, outcomes, self._outcome)
            except Exception as exc:  # their claims stay; the reconciler takes them back once they expire
                log.error("could not send %d status callbacks (%s); the reconciler will", len(group), exc)
                tasks = [lambda: None] * len(group)
            for task in tasks:
                self._pool.submit(self._run, task)  # type: ignore[union-attr]

    def _outcome(self, request: Any) -> None:
        with self._changed:
            self._outcomes.append(request)

    def _run(self, task: Callable[[], None]) -> None:
        try:
            task()
        except Exception:  # its claim stays; the reconciler takes it back once it expires
            log.exception("a status callback raised unexpectedly")
        finally:
            with self._changed:
                self._free += 1
                self._pending -= 1
                self._changed.notify_all()
