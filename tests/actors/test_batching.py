"""The batcher that lets a worker process's threads share one ledger statement."""

from __future__ import annotations

import threading
import time

import pytest

from actors.batching import Batcher


def test_a_lone_request_runs_at_once_and_gets_its_own_result():
    batcher = Batcher(lambda items: [item * 2 for item in items], "test")
    assert batcher.submit(21) == 42


def test_concurrent_requests_share_statements_and_each_gets_its_own_answer():
    sizes: list[int] = []

    def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        time.sleep(0.01)  # a statement in the database, during which others queue up
        return [item * 2 for item in items]

    batcher = Batcher(run, "test")
    results: dict[int, int] = {}
    start = threading.Barrier(20)

    def client(n: int) -> None:
        start.wait()
        results[n] = batcher.submit(n)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: n * 2 for n in range(20)}
    assert sum(sizes) == 20 and max(sizes) > 1


def failing_first_batch(items: list[int], calls: list[list[int]]) -> list[int]:
    """A batch runner whose first batch meets an outage."""
    calls.append(items)
    if len(calls) == 1:
        raise ConnectionError("ledger down")
    return items


def test_a_failing_batch_raises_its_error_in_every_waiting_thread_and_the_next_batch_still_runs():
    calls: list[list[int]] = []
    batcher = Batcher(lambda items: failing_first_batch(items, calls), "test")
    with pytest.raises(ConnectionError):
        batcher.submit(1)
    assert batcher.submit(2) == 2


def test_a_request_answered_now_goes_on_while_its_batch_runs_and_a_failure_after_does_not_touch_it():
    release = threading.Event()

    def run(items: list[int]) -> list[int]:
        if 1 in items:
            batcher.answer_now(items.index(1), -1)
            release.wait(30)
            raise ConnectionError("ledger down")
        return [item * 2 for item in items]

    batcher: Batcher[int, int] = Batcher(run, "test")
    try:
        assert batcher.submit(1) == -1  # answered while its batch is still held
    finally:
        release.set()
    assert batcher.submit(2) == 4


def test_posted_requests_run_without_their_sender_waiting_and_flush_waits_for_them():
    release = threading.Event()
    ran: list[int] = []

    def run(items: list[int]) -> list[None]:
        release.wait(5)
        ran.extend(items)
        return [None] * len(items)

    batcher = Batcher(run, "test")
    for n in range(5):
        batcher.post(n)  # returns while the first batch is still held in the "database"
    assert ran == []
    assert batcher.flush(timeout=0.05) is False
    release.set()
    assert batcher.flush(timeout=5) is True
    assert ran == [0, 1, 2, 3, 4]


def test_a_flush_with_nothing_ever_queued_returns_at_once():
    assert Batcher(lambda items: items, "test").flush(timeout=0) is True


def test_a_failing_batch_of_posted_requests_is_logged_and_the_next_batch_still_runs(caplog):
    calls: list[list[int]] = []
    batcher = Batcher(lambda items: failing_first_batch(items, calls), "test")
    batcher.post(1)
    assert batcher.flush(timeout=5)
    assert "a batch failed with 1 posted requests in it" in caplog.text
    assert batcher.submit(2) == 2


def test_posted_requests_alone_wait_for_the_next_request_to_share_its_batch():
    batches: list[list[str]] = []
    batcher = Batcher(lambda items: batches.append(items) or items, "test", linger=10.0)

    batcher.post("first")
    time.sleep(0.05)  # longer than a batch takes: without the linger, "first" would have run alone
    batcher.post("second")
    assert batcher.flush(timeout=20)

    assert batches == [["first", "second"]]


def test_posted_requests_alone_wait_for_a_waited_request_on_its_way_to_share_its_batch():
    batches: list[list[str]] = []
    batcher = Batcher(lambda items: batches.append(items) or items, "test", linger=10.0, coming=lambda: True)

    batcher.post("success")
    time.sleep(0.05)  # longer than a batch takes: without the linger, "success" would have run alone
    assert batcher.submit("claim") == "claim"

    assert batches == [["success", "claim"]]


def test_posted_requests_that_come_while_others_wait_for_company_wait_with_them():
    batches: list[list[str]] = []
    batcher = Batcher(lambda items: batches.append(items) or items, "test", linger=10.0, coming=lambda: True)

    batcher.post("first success")
    time.sleep(0.05)
    batcher.post("second success")  # ends no wait: the claim is still on its way
    time.sleep(0.05)
    assert batcher.submit("claim") == "claim"

    assert batches == [["first success", "second success", "claim"]]


def test_a_posted_request_runs_at_once_when_no_waited_request_is_on_its_way():
    ran = threading.Event()
    batches: list[list[str]] = []
    batcher = Batcher(
        lambda items: batches.append(items) or ran.set() or items, "test", linger=600.0, coming=lambda: False
    )

    batcher.post("success")

    assert ran.wait(10)  # not after the linger of 10 minutes: no claim is coming
    assert batcher.submit("claim") == "claim"
    assert batches == [["success"], ["claim"]]


def test_a_posted_request_alone_runs_once_the_linger_is_over():
    ran = threading.Event()
    batcher = Batcher(lambda items: ran.set() or items, "test", linger=0.05, coming=lambda: True)
    batcher.post("success")
    assert ran.wait(5)


def test_an_exception_as_one_request_s_answer_is_raised_in_that_request_s_thread_alone():
    batcher = Batcher(lambda items: [ValueError(item) if item < 0 else item for item in items], "test")
    with pytest.raises(ValueError):
        batcher.submit(-1)
    assert batcher.submit(1) == 1


def recording_batcher() -> tuple[Batcher[str, str], list[list[str]]]:
    batches: list[list[str]] = []

    def run(items: list[str]) -> list[str]:
        batches.append(list(items))
        return [f"{item} done" for item in items]

    return Batcher(run, "test"), batches


def test_a_rider_runs_with_the_next_batch_someone_waits_for_and_wakes_nobody_before():
    batcher, batches = recording_batcher()
    batcher.submit("first")  # the batch thread is up and sleeps until the next request

    batcher.post("rider", wait=600)
    batcher.post("posted")  # nobody waits for it: it runs at once, without the rider
    assert batcher.submit("claim") == "claim done"

    assert batches[0] == ["first"]
    assert ["rider"] not in batches
    assert any("claim" in batch and "rider" in batch for batch in batches)
    assert sum(batch.count("rider") for batch in batches) == 1


def test_a_rider_with_no_batch_to_ride_with_runs_alone_once_it_has_waited():
    ran = threading.Event()
    batcher = Batcher(lambda items: [ran.set() if item == "rider" else None for item in items], "test")
    batcher.submit("first")  # the batch thread sleeps with no deadline: the rider must wake it

    batcher.post("rider", wait=0.05)

    assert ran.wait(30)


def test_a_flush_takes_the_riders_along():
    batcher, batches = recording_batcher()
    batcher.post("rider", wait=600)

    assert batcher.flush(30)
    assert batches == [["rider"]]
