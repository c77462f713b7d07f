"""Group commit for worker threads: concurrent requests of one kind share one ledger statement."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")

#: Most requests one statement carries; bounds the statement's size and its row locks.
MAX_BATCH = 64


class Batcher(Generic[Request, Result]):
    """Runs `run_batch` on everything submitted meanwhile, from one thread of its own.

    No request waits for company: a lone request runs at once. Under load, requests that arrive while a
    batch is in the database form the next batch, so the statements (and commits) per job shrink as the
    load grows. The thread starts on first use, so it belongs to the process that uses it (Dramatiq forks).
    """

    def __init__(self, run_batch: Callable[[list[Request]], list[Result]], name: str) -> None:
        self._run_batch = run_batch
        self._name = name
        self._pending: list[tuple[Request, Future[Result]]] = []
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, request: Request) -> Result:
        """Wait for the batch holding `request` and return its result, or raise what the batch raised."""
        future: Future[Result] = Future()
        with self._ready:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            self._pending.append((request, future))
            self._ready.notify()
        return future.result()

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._pending:
                    self._ready.wait()
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                results = self._run_batch([request for request, _ in batch])
            except BaseException as exc:  # every waiter must hear of it, whatever it is
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                future.set_result(result)
