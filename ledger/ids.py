"""Time-ordered job ids (UUIDv7, RFC 9562) so new rows land at the right edge of the primary key index."""

from __future__ import annotations

import os
import time
import uuid

#: The version (7) and variant (RFC 4122) bits, and the mask that clears their places in the random bits.
_VERSION_AND_VARIANT = 0x7 << 76 | 0x2 << 62
_RANDOM = (1 << 80) - 1 & ~(0xF << 76 | 0x3 << 62)


def uuid7(now_ms: int | None = None) -> uuid.UUID:
    """Return a UUIDv7: 48 bits of Unix milliseconds, then random bits, with version and variant set."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big") & _RANDOM
    return uuid.UUID(int=(ms & 0xFFFF_FFFF_FFFF) << 80 | _VERSION_AND_VARIANT | rand)


def uuid7s(count: int, now_ms: int | None = None) -> list[uuid.UUID]:
    """`count` UUIDv7s of one millisecond, from one draw of random bytes: a batch's items paid a system call each
    (bench/README.md, 2026-12-03 20:07)."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    head = (ms & 0xFFFF_FFFF_FFFF) << 80 | _VERSION_AND_VARIANT
    rand = os.urandom(10 * count)
    return [
        uuid.UUID(int=head | int.from_bytes(rand[i : i + 10], "big") & _RANDOM) for i in range(0, 10 * count, 10)
    ]
