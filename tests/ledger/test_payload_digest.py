"""The payload digest replays compare: the very digest the ledger's rows already hold, however it is computed."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace
from sqlalchemy import update

from ledger import intake
from ledger.intake import Accepting, Intake
from ledger.schema import jobs
from tests.ledger.conftest import T0, notification


def digest_as_first_written(request: intake.NewNotification) -> str:
    """The digest as the ledger's first version wrote it, which every row recorded since holds."""
    canonical = {
        "recipient": request.recipient,
        "channel": request.channel,
        "message": request.message,
        "subject": request.subject,
        "metadata": request.metadata,
        "send_at": request.send_at.astimezone(UTC).isoformat() if request.send_at else None,
    }
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()


#: Payloads with the digests the code before msgspec wrote for them (computed with it, 2026-12-03): text that JSON
#: escapes, keys that sort differently by code point and by UTF-16, integers past 64 bits, and floats.
RECORDED = [
    (notification("k", recipient="user@example.com", message="Hello"), "54ec98d25e51efa568f420375dccd054"
     "5ae3a6f411e25c74a7c378df0c947340"),
    (notification(
        "k", recipient="+15551234567", channel="sms", message='Hé "quoted" \\ \n\t\x01 \u2028 😀', subject="Sub",
        metadata={
            "zeta": [1, 2**70, None, True, {"b": "x", "a": []}], "Alpha": {"\uffff": 1, "\U00010000": 2, "": "e"}
        },
        send_at=datetime(2026, 1, 31, 9, 0, tzinfo=timezone(timedelta(hours=-5))),
    ), "815aefd9d1ab8ba9e1d24027624c9d910678e7c5af7a67e145d3a8ea006de609"),
    (notification(
        "k", recipient="r", channel="log", message="m",
        metadata={"amount": 1e16, "ratio": 0.1, "tiny": 1e-7, "neg": -0.0, "list": [1.5, {"x": 2e22}]},
    ), "184b3ec5fc08be554695a2aec667ad676b1c4ca2d777f7ffc2994931cda0bc9c"),
]  # fmt: skip


def test_each_payload_has_the_digest_the_ledger_recorded_for_it_before():
    assert [request.payload_hash() for request, _ in RECORDED] == [digest for _, digest in RECORDED]


_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | _text
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    metadata=st.none() | st.dictionaries(_text, _json, max_size=5),
    message=_text.filter(str.strip),
    subject=st.none() | _text,
    offset_minutes=st.none() | st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_any_payload_has_the_digest_of_its_sorted_json(
    metadata: dict[str, Any] | None, message: str, subject: str | None, offset_minutes: int | None
):
    send_at = None if offset_minutes is None else T0.astimezone(timezone(timedelta(minutes=offset_minutes)))
    request = notification("k", message=message, subject=subject, metadata=metadata, send_at=send_at)
    assert request.payload_hash() == digest_as_first_written(request)


def test_a_job_recorded_before_is_replayed_by_a_single_request_and_by_a_batch(database):
    requests = [request for request, _ in RECORDED]
    for index, request in enumerate(requests):
        recorded = database.run(lambda conn, r=request: intake.accept(conn, r, now=T0, dispatch_now=True))
        requests[index] = request = replace(request, idempotency_key=f"k{index}")
        # The row as the earlier code wrote it: its key, and the digest it recorded.
        database.run(
            lambda conn, job=recorded.job_id, key=request.idempotency_key, digest=RECORDED[index][1]: conn.execute(
                update(jobs).where(jobs.c.id == job).values(idempotency_key=key, payload_hash=digest)
            )
        )

    single = [database.run(lambda conn, r=r: intake.accept(conn, r, now=T0, dispatch_now=True)) for r in requests]
    batch = database.run(lambda conn: intake.accept_batch(conn, [Accepting(r, T0, True) for r in requests]))

    assert [result.outcome for result in single + batch] == [Intake.REPLAYED] * (2 * len(requests))
