"""Intake in groups: the POSTs one API process handles at the same moment share one INSERT and one Redis trip."""

from __future__ import annotations

import logging
from collections.abc import Callable

from actors import tracing
from actors.batching import Batcher
from ledger import intake
from ledger.database import Database
from ledger.errors import LedgerUnavailable
from ledger.intake import Accepting, Intake, IntakeResult
from ledger.transitions import Dispatch

log = logging.getLogger("wjp.api")


class GroupIntake:
    """Accepts requests through one shared statement (group commit), then sends the new jobs' messages in one
    pipeline before any of them is answered: each 202 still means "committed and sent".

    A lone request goes at once; under load, the requests that arrive while a group is in the database form
    the next one, so commits and round trips per request shrink as the load grows (bench/README.md).
    """

    def __init__(self, database: Database, dispatch: Callable[[list[Dispatch]], None]) -> None:
        self.database = database
        self.dispatch = dispatch
        self._groups: Batcher[Accepting, IntakeResult | None] = Batcher(self._accept_group, "wjp-intake")

    def accept(self, item: Accepting) -> IntakeResult:
        """Record `item` unless its key is known, and send its message if it is due; see `intake.accept`."""
        with tracing.carrying(item.job_id):  # its spans, whichever thread makes them, are the request's children
            return self._accept(item)

    def _accept(self, item: Accepting) -> IntakeResult:
        result = self._groups.submit(item)
        if result is not None:
            return result
        # Its key was taken (or the group failed as a whole): the replay, mismatch or rare creation alone.
        result = self.database.run(
            lambda conn: intake.accept(
                conn, item.request, now=item.now, dispatch_now=item.dispatch_now, job_id=item.job_id
            )
        )
        if result.outcome is Intake.CREATED and result.dispatch_seq:
            self.dispatch([dispatch_of(result)])
        return result

    def _accept_group(self, group: list[Accepting]) -> list[IntakeResult | None]:
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


def dispatch_of(result: IntakeResult) -> Dispatch:
    assert result.next_attempt_at is not None
    return Dispatch(result.job_id, result.dispatch_seq, result.next_attempt_at, result.destination)
