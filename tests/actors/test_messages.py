"""A send's messages written from templates are byte for byte those written whole, whatever their ids hold."""

from __future__ import annotations

import uuid
from datetime import timedelta

import dramatiq
import pytest

from actors.broker import JOB_MESSAGES
from actors.callbacks import CALLBACK_MESSAGES
from actors.messages import MessageWriter, id_texts, rid_text
from ledger.ids import uuid7s
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch

PLACEHOLDER = "00000000-0000-0000-0000-000000000000"


def test_ids_are_written_as_str_writes_them():
    ids = [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), *uuid7s(50), *(uuid.uuid4() for _ in range(50))]
    assert [text.decode() for text in id_texts(ids)] == [str(job_id) for job_id in ids]
    assert id_texts([]) == []


@pytest.mark.parametrize("kind", [JOB_MESSAGES, CALLBACK_MESSAGES])
def test_messages_from_templates_are_those_written_whole(kind):
    now = utcnow()
    destinations = ["", "log", "webhook:example.com:443", f"webhook:{PLACEHOLDER}.example:443", 'a"quote\\ü']
    dispatches = [
        Dispatch(job_id, seq, now - timedelta(seconds=seq % 2), destinations[seq % len(destinations)])
        for seq, job_id in enumerate([*uuid7s(20), uuid.UUID(PLACEHOLDER)], start=1)
    ]
    dispatches.append(Dispatch(uuid.uuid4(), 1, now + timedelta(minutes=5), "log"))  # due later: written whole
    writer = MessageWriter("default", kind, sent_at=1_700_000_000_000)

    written = writer.write(dispatches, now=now, traced=None)

    whole = [writer._written(d, str(d.job_id), now, None) for d in dispatches]
    assert written == whole
    assert writer._templates[(3, destinations[3])] is None  # the placeholder in the destination: written whole
    assert all(writer._templates[(seq, destinations[seq % 5])] is not None for seq in (1, 2, 4, 5))
    for (queue, rid, entry), dispatch in zip(written, dispatches, strict=True):
        assert rid_text(rid) == kind.message_id(dispatch)
        body = dramatiq.Message.decode(entry[len(rid) :].split(b"\r\n", 1)[1][:-2])
        assert body.args == (str(dispatch.job_id),) and body.message_id == kind.message_id(dispatch)
        assert queue == ("default.DQ" if dispatch.due_at > now else "default")
