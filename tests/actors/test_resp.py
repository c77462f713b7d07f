"""Commands packed by hand for Redis's wire: byte for byte what redis-py sends, and replies read back in order."""

from __future__ import annotations

import fakeredis
import pytest
import redis

from actors import resp

ARGS: list[resp.Arg] = ["EVALSHA", "é ünïcode", b"\x00\r\nraw", 0, -17, 2**40, 0.25, 1e-7, ""]


@pytest.fixture(params=["redis", "fakeredis"])
def client(request: pytest.FixtureRequest) -> redis.Redis:
    if request.param == "fakeredis":
        return fakeredis.FakeRedis()
    return redis.Redis.from_url(request.getfixturevalue("redis_server_url"))


def test_a_packed_command_is_what_redis_py_packs():
    redis_py = b"".join(redis.Connection().pack_command(*ARGS))

    assert resp.pack(ARGS) == redis_py
    assert resp.command(resp.Packed(ARGS[:3]), *ARGS[3:5], resp.Packed(ARGS[5:])) == redis_py


def test_an_argument_of_another_type_is_refused():
    with pytest.raises(TypeError):
        resp.pack(["SET", "k", None])  # type: ignore[list-item]


def test_replies_come_back_in_order_and_an_error_is_raised_after_all_were_read(client: redis.Redis):
    key = "wjp:test-resp"
    client.delete(key)
    commands = [resp.pack(["SET", key, "v"]), resp.pack(["LPUSH", key, "x"]), resp.pack(["GET", key])]

    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        resp.exchange(client, commands)

    # The GET after the failed LPUSH ran and its reply was read: the connection goes on in step.
    assert resp.exchange(client, [resp.pack(["GET", key]), resp.pack(["DEL", key])]) == [b"v", 1]
