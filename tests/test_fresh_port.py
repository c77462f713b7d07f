"""A receiver a test starts does not inherit what an earlier run left in the shared Redis about its port."""

from __future__ import annotations

import time

import redis

from actors.flow.gate import DEFAULT_PREFIX, Gate
from actors.flow.keys import destination_key
from tests.conftest import free_port
from tests.webhook_sink import webhook_sink


def test_a_sink_on_a_port_an_earlier_run_left_an_open_circuit_for_starts_closed(redis_server_url):
    port = free_port()
    key = destination_key("webhook", "127.0.0.1", port)
    client = redis.Redis.from_url(redis_server_url)
    now_ms = int(time.time() * 1000)
    # What a run killed mid-test left: a circuit opened for 30 s after 12 failures, kept for a day.
    client.hset(
        f"{DEFAULT_PREFIX}state:{key}",
        mapping={"circuit": "open", "failures": 12, "reopenings": 0, "opened_until": now_ms + 30_000,
                 "forget_at": now_ms + 86_400_000},
    )  # fmt: skip
    client.zadd(f"{DEFAULT_PREFIX}known", {key: now_ms + 86_400_000})
    try:
        assert Gate(client).inspect([key])[0].circuit == "open"
        with webhook_sink(port=port):
            state = Gate(client).inspect([key])[0]
            assert (state.circuit, state.consecutive_failures) == ("closed", 0)
    finally:
        client.delete(f"{DEFAULT_PREFIX}state:{key}", f"{DEFAULT_PREFIX}leases:{key}")
        client.zrem(f"{DEFAULT_PREFIX}known", key)
        client.close()
