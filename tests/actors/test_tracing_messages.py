"""Which trace a job's message joins: the job's own when its own work sends it; a trace of its own, linked to the
sender, when other work does (a destination reset, a worker releasing another job); a new one from a reconciler
pass, which has no span current. Real Redis, spans exported to a real OTLP/HTTP receiver."""

from __future__ import annotations

import json
import uuid

import pytest
import redis

from actors import tracing
from actors.broker import NAMESPACE
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from tests.otlp_receiver import exporting


@pytest.fixture
def traced(monkeypatch):
    with exporting(monkeypatch) as receiver:
        yield receiver


def test_a_message_joins_its_own_jobs_trace_only(traced, dispatcher, redis_server_url, queue_name):
    own, other, released, lone = (uuid.uuid4() for _ in range(4))

    def send(job_id: uuid.UUID) -> None:
        dispatcher.send([Dispatch(job_id, 1, utcnow(), "")], now=utcnow())

    with tracing.span("own work", **{tracing.JOB: str(own)}):
        send(own)
    with tracing.span("other work", **{tracing.JOB: str(other)}):
        send(released)
    send(lone)  # as a reconciler pass sends
    tracing.flush()

    spans = traced.wait_for(lambda spans: len(spans) == 5)
    by_job = {(s.name, s.attributes[tracing.JOB]): s for s in spans}
    own_work, other_work = by_job["own work", str(own)], by_job["other work", str(other)]
    joined = by_job["wjp.enqueue", str(own)]
    assert (joined.trace_id, joined.parent_id, joined.links) == (own_work.trace_id, own_work.span_id, ())
    linked = by_job["wjp.enqueue", str(released)]
    assert linked.parent_id == "" and linked.trace_id != other_work.trace_id
    assert linked.links == (other_work.span_id,)
    alone = by_job["wjp.enqueue", str(lone)]
    assert alone.parent_id == "" and alone.links == ()

    bodies = redis.Redis.from_url(redis_server_url).hgetall(f"{NAMESPACE}:{queue_name}.msgs").values()
    carried = {json.loads(body)["args"][0]: json.loads(body)["options"][tracing.TRACE_OPTION] for body in bodies}
    for job_id, span in ((own, joined), (released, linked), (lone, alone)):
        (traceparent,) = carried[str(job_id)].values()
        assert traceparent.startswith(f"00-{span.trace_id}-{span.span_id}-")  # flags: sampled (and random ids)
