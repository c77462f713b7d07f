"""Blocking calls off the loop (`service.offload.Offload`): each call's result, exception and context reach its
caller; its threads are started as needed, never more than asked, and end with it."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import time

import pytest

from service.offload import Offload

REQUEST = contextvars.ContextVar("request", default="none")


def test_a_call_returns_its_result_raises_its_error_and_sees_its_callers_context():
    async def main() -> None:
        offload = Offload(2)
        REQUEST.set("the request")
        assert await offload(lambda a, *, b: (a, b, REQUEST.get()), 1, b=2) == (1, 2, "the request")
        with pytest.raises(KeyError, match="missing"):
            await offload({}.__getitem__, "missing")

    asyncio.run(main())


def test_calls_run_at_most_threads_at_once_and_the_threads_end_with_their_offload():
    running, most = 0, 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1

    async def main() -> Offload:
        offload = Offload(3)
        await asyncio.gather(*(offload(work) for _ in range(12)))
        return offload

    offload = asyncio.run(main())
    assert most == 3
    ours = offload._threads[:]
    assert len(ours) == 3 and all(t.is_alive() for t in ours)
    del offload
    gc.collect()
    for thread in ours:
        thread.join(5)
    assert not any(t.is_alive() for t in ours)


def test_a_caller_gone_before_its_call_ends_leaves_the_loop_and_the_threads_fine():
    async def main() -> None:
        offload = Offload(1)
        release = threading.Event()
        call = asyncio.ensure_future(offload(release.wait, 5))
        await asyncio.sleep(0.01)
        call.cancel()
        release.set()
        await asyncio.sleep(0.05)  # the outcome arrives for a cancelled future: dropped
        assert await offload(lambda: "next") == "next"

    asyncio.run(main())
