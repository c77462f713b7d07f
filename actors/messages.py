"""The messages `Dispatcher.send` enqueues: Dramatiq's message bodies and Redis ids, written as the Redis arguments
that carry them.

A batch's messages differ only by their job's id: each (kind, seq, destination) of one send is written once around a
placeholder id and every message of it is that template joined around its own id, the ids' text written by msgspec
in one call. Writing each message whole (its options, its body, `str` of its id twice, its Redis arguments) was the
largest part of a batch item's CPU in the API (bench/README.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import msgspec
from dramatiq.common import dq_name

from actors import resp
from actors.tracing import Enqueued
from ledger.transitions import Dispatch

#: Option carrying the message's Redis id: "<job id>.<dispatch seq>".
RID_OPTION = "wjp_rid"
#: Option carrying the job's destination, so that a worker admits the message before claiming its job; a message
#: without it (sent by an older version) goes straight to its claim.
DEST_OPTION = "wjp_dest"


class MessageKind(NamedTuple):
    """What a dispatch's message is for: the actor it goes to and how its Redis id is written."""

    actor: str
    message_id: Callable[[Dispatch], str]


#: A message as Redis receives it: its queue, its Redis id as a bulk string, and the entry of the queue's hash that
#: holds its body (the id and the body, two bulk strings). A plain tuple: a named one costs a Python call to build.
Outgoing = tuple[str, bytes, bytes]


class _MessageBody(msgspec.Struct, gc=False):
    """A `dramatiq.Message`'s fields, which Dramatiq's decoder reads back as that message (test_broker_contract.py),
    written by msgspec in a quarter of `json.dumps`'s time (bench/README.md, 2026-12-03 20:07)."""

    queue_name: str
    actor_name: str
    args: tuple[str, ...]
    kwargs: dict[str, object]
    options: dict[str, object]
    message_id: str
    message_timestamp: int


_MESSAGE_ENCODER = msgspec.json.Encoder()
_IDS = msgspec.json.Encoder(uuid_format="canonical")
#: The id a template is written around; `MessageWriter._template` checks it appears only where the job's id goes.
_PLACEHOLDER = uuid.UUID(int=0)
_PLACEHOLDER_TEXT = str(_PLACEHOLDER).encode()
_UNKNOWN: Any = object()
#: Fewer messages than this in a send are written whole: a template costs about two messages written whole.
_TEMPLATES_FROM = 4


def id_texts(job_ids: Sequence[uuid.UUID]) -> list[bytes]:
    """Each id's canonical text, as `str` writes it: msgspec writes them all in one call, 36 characters each."""
    raw = _IDS.encode(job_ids)  # ["…","…",…]: an id every 39 bytes
    return [raw[start : start + 36] for start in range(2, 39 * len(job_ids), 39)]


def rid_text(rid: bytes) -> str:
    """The Redis id in a message's Redis id bulk string (an `Outgoing`'s second item)."""
    return rid[rid.index(b"\n") + 1 : -2].decode()


def _options(rid: str, destination: str) -> dict[str, object]:
    options: dict[str, object] = {RID_OPTION: rid, "redis_message_id": rid}
    if destination:
        options[DEST_OPTION] = destination
    return options


class MessageWriter:
    """Writes the messages of one send to `queue`, sent at `sent_at` (Unix ms)."""

    def __init__(self, queue: str, kind: MessageKind, sent_at: int) -> None:
        self.queue = queue
        self.kind = kind
        self.sent_at = sent_at
        self._templates: dict[tuple[int, str], tuple[list[bytes], list[bytes]] | None] = {}

    def write(self, dispatches: Sequence[Dispatch], *, now: datetime, traced: Enqueued | None) -> list[Outgoing]:
        """Each dispatch's message, due at its `due_at` (a later one goes to the delay queue, with its eta)."""
        if len(dispatches) < _TEMPLATES_FROM:
            return [self._written(dispatch, str(dispatch.job_id), now, traced) for dispatch in dispatches]
        out: list[Outgoing] = []
        queue, templates = self.queue, self._templates
        for dispatch, job_id in zip(dispatches, id_texts([d.job_id for d in dispatches]), strict=True):
            if traced is None and dispatch.due_at <= now:
                template = templates.get((dispatch.seq, dispatch.destination), _UNKNOWN)
                if template is _UNKNOWN:
                    template = self._template(dispatch.seq, dispatch.destination)
                if template is not None:
                    rid, entry = template
                    out.append((queue, job_id.join(rid), job_id.join(entry)))
                    continue
            out.append(self._written(dispatch, job_id.decode(), now, traced))
        return out

    def _written(self, dispatch: Dispatch, job_id: str, now: datetime, traced: Enqueued | None) -> Outgoing:
        """A message written whole: one due later, or carrying its trace."""
        rid = self.kind.message_id(dispatch)
        options = _options(rid, dispatch.destination)
        delay_ms = int((dispatch.due_at - now).total_seconds() * 1000)
        queue = self.queue
        if delay_ms > 0:
            queue = dq_name(self.queue)
            options["eta"] = self.sent_at + delay_ms
        if traced is not None:
            traced.add(dispatch.job_id, dispatch.seq, queue, options)
        body = _MessageBody(queue, self.kind.actor, (job_id,), {}, options, rid, self.sent_at)
        rid_bulk = resp.bulk(rid)
        return queue, rid_bulk, rid_bulk + resp.bulk(_MESSAGE_ENCODER.encode(body))

    def _template(self, seq: int, destination: str) -> tuple[list[bytes], list[bytes]] | None:
        """The Redis id and hash entry of a message due now, split where its job's id goes; None (each written
        whole) should the placeholder id appear anywhere else, as in a destination that holds it."""
        due_now = datetime.min
        _, rid_bulk, entry_bulks = self._written(
            Dispatch(_PLACEHOLDER, seq, due_now, destination), str(_PLACEHOLDER), due_now, None
        )
        rid, entry = rid_bulk.split(_PLACEHOLDER_TEXT), entry_bulks.split(_PLACEHOLDER_TEXT)
        # In the entry: the Redis id, the body's job id, then its message id and two options, each the Redis id.
        found = (rid, entry) if len(entry) - 1 == 1 + 4 * (len(rid) - 1) else None
        self._templates[seq, destination] = found
        return found
