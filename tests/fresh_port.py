"""A receiver's port is fresh for the test that just bound it: what the shared Redis still holds about the
destination on that port (a circuit opened, failures counted, leases) was left by an earlier test or run that the
OS gave the same port to, and would trip this test's breaker early or defer its jobs (flow state lives 24 h)."""

from __future__ import annotations

import os

import redis

from actors.flow.gate import DEFAULT_PREFIX
from actors.flow.keys import destination_key

#: The Redis the tests share (tests/conftest.py's REDIS_URL).
SHARED_REDIS_URL = os.environ.get("WJP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def forget_earlier_flow_state(host: str, port: int) -> None:
    """Delete the shared Redis's flow state of `webhook:<host>:<port>`, if that Redis is up."""
    key = destination_key("webhook", host, port)
    client = redis.Redis.from_url(SHARED_REDIS_URL, socket_connect_timeout=1)
    try:
        client.delete(f"{DEFAULT_PREFIX}state:{key}", f"{DEFAULT_PREFIX}leases:{key}")
        client.zrem(f"{DEFAULT_PREFIX}known", key)
    except redis.ConnectionError:
        pass  # no shared Redis: nothing was left there
    finally:
        client.close()
