"""Job ids are UUIDv7 (RFC 9562): versioned, time-ordered by millisecond, and unique."""

from __future__ import annotations

import time
import uuid

import pytest

from ledger.ids import uuid7, uuid7s


def test_a_job_id_is_a_version_7_uuid_with_the_rfc_4122_variant():
    for _ in range(1000):
        value = uuid7()
        assert value.version == 7
        assert value.variant == uuid.RFC_4122


def test_a_job_id_carries_its_unix_millisecond_in_the_first_48_bits():
    assert uuid7(now_ms=1_700_000_000_123).int >> 80 == 1_700_000_000_123
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= value.int >> 80 <= after


@pytest.mark.parametrize("ms", [0, 1, 1_700_000_000_000, 2**48 - 2])
def test_ids_of_a_later_millisecond_sort_after_every_id_of_an_earlier_one(ms):
    earlier = [uuid7(now_ms=ms) for _ in range(200)]
    later = [uuid7(now_ms=ms + 1) for _ in range(200)]
    assert max(earlier) < min(later)
    assert max(str(u) for u in earlier) < min(str(u) for u in later)
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in earlier + later)


def test_ids_made_over_increasing_milliseconds_are_in_creation_order():
    ids = [uuid7(now_ms=1_700_000_000_000 + i) for i in range(1000)]
    assert ids == sorted(ids)


def test_ten_thousand_ids_are_all_different_even_within_one_millisecond():
    assert len({uuid7() for _ in range(10_000)}) == 10_000
    assert len({uuid7(now_ms=42) for _ in range(10_000)}) == 10_000


def test_ids_drawn_together_are_distinct_version_7_uuids_of_their_millisecond():
    ids = uuid7s(1000, now_ms=1_700_000_000_123)
    assert len(set(ids)) == 1000
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 and u.int >> 80 == 1_700_000_000_123 for u in ids)


def test_ids_drawn_together_have_every_random_bit_drawn_and_are_plain_uuids():
    ids = uuid7s(1000, now_ms=1_700_000_000_123)
    random_bits = (1 << 80) - 1 & ~(0xF << 76 | 0x3 << 62)
    # Each of the 74 random bits is set in some ids and clear in others (a wrong mask would pin some of them).
    assert all(0 < sum(u.int >> bit & 1 for u in ids) < 1000 for bit in range(80) if random_bits >> bit & 1)
    assert all(type(u) is uuid.UUID and u == uuid.UUID(str(u)) for u in ids)
