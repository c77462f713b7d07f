"""Commands written in Redis's wire protocol (RESP) by hand, and sent together over one pooled connection.

redis-py's packer encodes each argument through several calls; on the worker's and the API's every-job calls (the
gate's script, the fetch, the enqueue) it was a large share of a worker's CPU at moderate rates (bench/README.md,
2026-12-04 07:10). Here an argument is a bytes `%` format, and the parts that never change are packed once.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

#: What a command's argument may be: bytes as they are, text as UTF-8, integers in decimal, floats as `repr`.
Arg = bytes | str | int | float


def bulk(arg: Arg) -> bytes:
    """One argument as a RESP bulk string."""
    if type(arg) is not bytes:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        elif isinstance(arg, float):
            arg = repr(arg).encode()
        elif isinstance(arg, bytes | bytearray | memoryview):
            arg = bytes(arg)
        else:
            raise TypeError(f"a Redis argument cannot be a {type(arg).__name__}")
    return b"$%d\r\n%s\r\n" % (len(arg), arg)


class Packed:
    """Arguments packed once, for commands that repeat them (`command`)."""

    __slots__ = ("count", "data")

    def __init__(self, args: Sequence[Arg]) -> None:
        self.count = len(args)
        self.data = b"".join([bulk(arg) for arg in args])

    @classmethod
    def bulks(cls, count: int, data: bytes) -> Packed:
        """`count` arguments already written as bulk strings, one after the other, in `data`."""
        packed = cls.__new__(cls)
        packed.count, packed.data = count, data
        return packed


def command(*parts: Packed | Arg) -> bytes:
    """A command of `parts`: arguments, or `Packed` runs of them."""
    count = 0
    chunks = [b""]
    for part in parts:
        if type(part) is Packed:
            count += part.count
            chunks.append(part.data)
        else:
            count += 1
            chunks.append(bulk(part))  # type: ignore[arg-type]
    chunks[0] = b"*%d\r\n" % count
    return b"".join(chunks)


def pack(args: Sequence[Arg]) -> bytes:
    """A command of plain arguments."""
    return b"*%d\r\n%s" % (len(args), b"".join([bulk(arg) for arg in args]))


def exchange(client: redis.Redis, commands: Sequence[bytes]) -> list[object]:
    """Send packed `commands` in one write on a pooled connection of `client` and read their replies; a reply that
    is an error is raised, after every reply has been read.

    The pool checks a connection as it hands it out (one Redis dropped is replaced); one that fails under the
    commands is closed, never returned to the pool with replies unread."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([b"".join(commands)])
        replies: list[object] = []
        error: redis.ResponseError | None = None
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as exc:  # the command failed, the connection is fine: read the rest
                error = error or exc
                replies.append(exc)
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    if error is not None:
        raise error
    return replies
