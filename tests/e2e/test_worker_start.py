"""`wjp worker` runs Dramatiq in its own process and forks the worker processes from it with everything imported:
what it sets on Dramatiq's consumers must hold there, though Dramatiq read its own variables before the fork."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
import redis

from actors.broker import Dispatcher, make_broker
from actors.consumer import NAMESPACE
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from tests.e2e.conftest import Process
from tests.e2e.test_processes import ledger_env

DELAYED = 150


def leased_delayed(client: redis.Redis, queue: str) -> int:
    """Delayed messages some worker process fetched and holds in memory until they are due."""
    return sum(client.scard(key) for key in client.scan_iter(match=f"{NAMESPACE}:__acks__.*.{queue}.DQ"))


@pytest.mark.parametrize(("operator_value", "held"), [(None, 100), ("30", 30)], ids=["default", "operator's"])
def test_a_worker_process_holds_the_delayed_messages_wjp_worker_allows_it(
    postgres_db, redis_server_url, queue_name, tmp_path, processes, operator_value, held
):
    # Given 150 messages due in an hour, in Redis before any worker runs
    now = utcnow()
    dispatcher = Dispatcher(make_broker(redis_server_url), queue_name)
    dispatcher.send([Dispatch(uuid.uuid4(), 1, now + timedelta(hours=1)) for _ in range(DELAYED)], now=now)
    # When `wjp worker` starts one process of one thread (100 delayed messages per thread, or the operator's
    # dramatiq_delay_queue_prefetch)
    extra = {} if operator_value is None else {"dramatiq_delay_queue_prefetch": operator_value}
    env = ledger_env(postgres_db, redis_server_url, queue_name, tmp_path, **extra)
    worker = Process(["worker", "--processes", "1", "--threads", "1"], env, tmp_path / "worker.log")
    processes.append(worker)
    client = redis.Redis.from_url(redis_server_url)
    deadline = time.monotonic() + 30
    while leased_delayed(client, queue_name) < held and time.monotonic() < deadline:
        assert worker.handle.poll() is None, worker.output()
        time.sleep(0.05)
    time.sleep(0.5)  # a consumer that would take more has fetched them by now
    # Then its process holds that many, not Dramatiq's 1,000 per thread, and the rest wait in Redis's delay queue
    assert leased_delayed(client, queue_name) == held, worker.output()
    assert client.llen(f"{NAMESPACE}:{queue_name}.DQ") == DELAYED - held
    assert worker.terminate() == 0
