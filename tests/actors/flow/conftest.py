"""The gate under test, on the real Redis and on fakeredis's Lua, under a key prefix of its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from actors.flow import Gate


@pytest.fixture(params=["redis", "fakeredis"])
def client(request: pytest.FixtureRequest) -> redis.Redis:
    if request.param == "fakeredis":
        return fakeredis.FakeRedis()
    return redis.Redis.from_url(request.getfixturevalue("redis_server_url"))


@pytest.fixture
def gate(client: redis.Redis) -> Iterator[Gate]:
    """A gate under a prefix of its own; every key under it is deleted afterwards."""
    gate = Gate(client, prefix=f"wjp:test-flow-{uuid.uuid4().hex[:10]}:")
    yield gate
    keys = list(client.scan_iter(match=f"{gate.prefix}*"))
    if keys:
        client.delete(*keys)
