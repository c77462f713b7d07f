"""Batch intake in groups (`service.batch_group.BatchGroups`): the batches that arrive while a group is in the ledger
share the next call, up to its size, one producer per call; each batch gets its own results, a group that fails
otherwise than by an outage fails only the batch that made it fail, and the group thread ends with its groups."""

from __future__ import annotations

import asyncio
import gc
import threading
from datetime import UTC, datetime

import pytest

from ledger.errors import LedgerUnavailable
from ledger.intake import Accepting, Intake, IntakeResult, NewNotification
from ledger.states import Status
from service.batch_group import BatchGroups

NOW = datetime(2026, 12, 4, tzinfo=UTC)


def batch(name: str, size: int, scope: str = "") -> list[Accepting]:
    return [
        Accepting(NewNotification(f"{name}-{i}", "to@example.com", "log", "hi", 3, scope=scope), NOW, True)
        for i in range(size)
    ]


def created(item: Accepting) -> IntakeResult:
    return IntakeResult(Intake.CREATED, item.job_id, Status.PENDING, NOW)


class Ledger:
    """A fake `accept` that records each call's keys; the first call waits until `release` is set, so that the
    batches posted meanwhile queue up behind it."""

    def __init__(self, refuse: str | None = None, outage: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.entered, self.release = threading.Event(), threading.Event()
        self.refuse, self.outage = refuse, outage

    def accept(self, items: list[Accepting]) -> list[IntakeResult]:
        self.calls.append([item.request.idempotency_key for item in items])
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(5)
            return [created(item) for item in items]
        if self.outage:
            raise LedgerUnavailable("connection refused")
        if any(item.request.idempotency_key == self.refuse for item in items):
            raise ValueError("a value the ledger refuses")
        return [created(item) for item in items]


async def post_behind_a_first_batch(ledger: Ledger, groups: BatchGroups, *batches: list[Accepting]) -> list[object]:
    """Post a first batch, then `batches` while it is in the ledger; each one's results or error."""
    first = asyncio.ensure_future(groups(batch("first", 1)))
    await asyncio.to_thread(ledger.entered.wait, 5)
    later = [asyncio.ensure_future(groups(b)) for b in batches]
    await asyncio.sleep(0.05)  # every later batch queued behind the first one
    ledger.release.set()
    await first
    return list(await asyncio.gather(*later, return_exceptions=True))


def test_batches_that_arrive_while_a_group_is_in_the_ledger_share_the_next_call_and_get_their_own_results():
    ledger = Ledger()
    groups = BatchGroups(ledger.accept, max_items=10)
    a, b = batch("a", 3), batch("b", 2)

    outcomes = asyncio.run(post_behind_a_first_batch(ledger, groups, a, b))

    assert ledger.calls == [["first-0"], ["a-0", "a-1", "a-2", "b-0", "b-1"]]
    assert [[r.job_id for r in results] for results in outcomes] == [[i.job_id for i in a], [i.job_id for i in b]]


def test_a_group_holds_at_most_its_size_in_items_and_one_producers_batches():
    ledger = Ledger()
    groups = BatchGroups(ledger.accept, max_items=5)

    outcomes = asyncio.run(
        post_behind_a_first_batch(
            ledger, groups, batch("a", 3), batch("b", 3), batch("c", 1), batch("d", 1, scope="other"), batch("e", 6)
        )
    )

    assert ledger.calls == [
        ["first-0"],
        ["a-0", "a-1", "a-2"],
        ["b-0", "b-1", "b-2", "c-0"],
        ["d-0"],
        [f"e-{i}" for i in range(6)],
    ]
    assert [len(results) for results in outcomes] == [3, 3, 1, 1, 6]


def test_a_group_refused_by_the_ledger_fails_only_the_batch_that_made_it_fail():
    ledger = Ledger(refuse="b-1")
    groups = BatchGroups(ledger.accept, max_items=10)

    a, b, c = asyncio.run(post_behind_a_first_batch(ledger, groups, batch("a", 2), batch("b", 2), batch("c", 1)))

    assert isinstance(b, ValueError)
    assert [len(a), len(c)] == [2, 1]
    assert ledger.calls[1:] == [["a-0", "a-1", "b-0", "b-1", "c-0"], ["a-0", "a-1"], ["b-0", "b-1"], ["c-0"]]


def test_an_outage_answers_every_batch_of_the_group_with_it_at_once():
    ledger = Ledger(outage=True)
    groups = BatchGroups(ledger.accept, max_items=10)

    outcomes = asyncio.run(post_behind_a_first_batch(ledger, groups, batch("a", 2), batch("b", 2)))

    assert all(isinstance(outcome, LedgerUnavailable) for outcome in outcomes)
    assert len(ledger.calls) == 2


def test_a_batch_whose_request_went_away_leaves_the_group_thread_serving():
    ledger = Ledger()
    ledger.release.set()
    groups = BatchGroups(ledger.accept, max_items=10)

    async def main() -> list[IntakeResult]:
        gone = asyncio.ensure_future(groups(batch("gone", 1)))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await groups(batch("next", 1))

    assert len(asyncio.run(main())) == 1


def test_the_group_thread_ends_with_its_groups():
    ledger = Ledger()
    ledger.release.set()
    groups = BatchGroups(ledger.accept, max_items=10)
    assert len(asyncio.run(groups(batch("a", 2)))) == 2
    thread = groups._thread
    assert thread is not None and thread.is_alive()

    del groups
    gc.collect()
    thread.join(5)

    assert not thread.is_alive()
