"""Intake in groups: the POSTs one API process has read at the same moment share one INSERT and one Redis trip."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable

from actors import tracing
from actors.batching import MAX_BATCH
from ledger import intake
from ledger.database import Database
from ledger.errors import LedgerUnavailable
from ledger.intake import Accepting, Intake, IntakeResult
from ledger.transitions import Dispatch
from service.offload import Offload

log = logging.getLogger("wjp.api")

_Waiting = tuple[Accepting, "asyncio.Future[IntakeResult | None]"]


class GroupIntake:
    """Accepts requests through one shared statement (group commit), then sends the new jobs' messages in one
    pipeline before any of them is answered: each 202 still means "committed and sent".

    A lone request goes at once; the requests the loop reads while a group is in the database form the next one,
    so commits and round trips per request shrink as the load grows (bench/README.md). A group runs on a thread
    of its own, which keeps its connection (`Database.run(kept=True)`): one thread hand-off per group, not per
    request, and the loop stays free meanwhile.
    """

    def __init__(self, database: Database, dispatch: Callable[[list[Dispatch]], None], offload: Offload) -> None:
        self.database = database
        self.dispatch = dispatch
        self.offload = offload
        self.group_thread = Offload(1, "wjp-intake")
        # A process serves from one loop; tests' clients may run one per thread, each with its own groups.
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Groups] = weakref.WeakKeyDictionary()

    async def accept(self, item: Accepting) -> IntakeResult:
        """Record `item` unless its key is known, and send its message if it is due; see `intake.accept`."""
        with tracing.carrying(item.job_id):  # its spans, whichever thread makes them, are the request's children
            loop = asyncio.get_running_loop()
            groups = self._loops.get(loop)
            if groups is None:
                groups = self._loops[loop] = _Groups(self)
            result = await groups.submit(item)
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
        self.dispatch([dispatch_of(result) for result in results if result is not None and result.dispatch_seq])
        return results


class _Groups:
    """The requests of one event loop waiting for a group, and whether a group of theirs is running."""

    def __init__(self, owner: GroupIntake) -> None:
        self.owner = owner
        self.waiting: list[_Waiting] = []
        self.running = False

    async def submit(self, item: Accepting) -> IntakeResult | None:
        answer: asyncio.Future[IntakeResult | None] = asyncio.get_running_loop().create_future()
        self.waiting.append((item, answer))
        if not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self._run())
        return await answer

    async def _run(self) -> None:
        try:
            while self.waiting:
                group, self.waiting = self.waiting[:MAX_BATCH], self.waiting[MAX_BATCH:]
                items = [item for item, _ in group]
                try:
                    results = await self.owner.group_thread(self.owner.accept_group, items)
                except Exception as exc:
                    for _, answer in group:
                        if not answer.done():
                            answer.set_exception(exc)
                    continue
                for (_, answer), result in zip(group, results, strict=True):
                    if not answer.done():
                        answer.set_result(result)
        finally:
            self.running = False


def dispatch_of(result: IntakeResult) -> Dispatch:
    assert result.next_attempt_at is not None
    return Dispatch(result.job_id, result.dispatch_seq, result.next_attempt_at, result.destination)
