"""Time-ordered job ids (UUIDv7, RFC 9562) so new rows land at the right edge of the primary key index."""

from __future__ import annotations

import os
import time
import uuid

import msgspec

#: The version (7) and variant (RFC 4122) bits, and the mask that clears their places in the random bits.
_VERSION_AND_VARIANT = 0x7 << 76 | 0x2 << 62
_RANDOM = (1 << 80) - 1 & ~(0xF << 76 | 0x3 << 62)

# `uuid7s` writes its ids as a MessagePack array of 16-byte binaries, which msgspec reads as `uuid.UUID`s in C. Each
# is 18 bytes: the binary's header (C4 10), 6 bytes of milliseconds, then 10 random ones whose version and variant
# bits are set. `_KEPT` keeps the random bits of one, and `_SET` (with the millisecond) writes the rest.
_UUIDS = msgspec.msgpack.Decoder(list[uuid.UUID])
_KEPT = bytes(8) + bytes.fromhex("0fff3fffffffffffffff")
_SET = bytes.fromhex("c410"), bytes.fromhex("70008000000000000000")


def uuid7(now_ms: int | None = None) -> uuid.UUID:
    """Return a UUIDv7: 48 bits of Unix milliseconds, then random bits, with version and variant set."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big") & _RANDOM
    return uuid.UUID(int=(ms & 0xFFFF_FFFF_FFFF) << 80 | _VERSION_AND_VARIANT | rand)


def uuid7s(count: int, now_ms: int | None = None) -> list[uuid.UUID]:
    """`count` UUIDv7s of one millisecond, from one draw of random bytes, their bits set over all of them at once:
    a batch's items paid a system call each, then a `uuid.UUID` built in Python each (bench/README.md)."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    size = 18 * count
    one = _SET[0] + (ms & 0xFFFF_FFFF_FFFF).to_bytes(6, "big") + _SET[1]
    drawn = int.from_bytes(os.urandom(size), "big") & int.from_bytes(_KEPT * count, "big")
    packed = (drawn | int.from_bytes(one * count, "big")).to_bytes(size, "big")
    return _UUIDS.decode(b"\xdd" + count.to_bytes(4, "big") + packed)
