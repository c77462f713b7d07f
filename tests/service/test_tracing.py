"""Traces in the API, in-process: a request carrying a W3C `traceparent` continues the caller's trace through the
ledger write and the enqueue, and the job's message carries the context its worker continues; off, nothing of
OpenTelemetry is loaded and messages carry no trace."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import redis

from actors import tracing
from actors.broker import NAMESPACE
from tests.e2e.conftest import ROOT
from tests.otlp_receiver import exporting
from tests.service.conftest import notification, post

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def traced(monkeypatch):
    with exporting(monkeypatch) as receiver:
        yield receiver


def queued_message(redis_server_url: str, queue_name: str, job_id: str) -> dict:
    bodies = redis.Redis.from_url(redis_server_url).hgetall(f"{NAMESPACE}:{queue_name}.msgs")
    (message,) = [json.loads(body) for body in bodies.values() if json.loads(body)["args"] == [job_id]]
    return message


def test_a_post_continues_the_callers_trace_and_its_message_carries_the_enqueue_span(
    traced, make_client, redis_server_url, queue_name
):
    client = make_client()
    answer = post(client, notification(channel="log"), traceparent=f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")
    assert answer.status_code == 202
    job_id = answer.json["job_id"]
    tracing.flush()

    spans = traced.wait_for(lambda spans: any(s.name == "wjp.enqueue" for s in spans))
    assert {s.trace_id for s in spans} == {CALLER_TRACE}
    by_name = {s.name: s for s in spans}
    request = by_name["POST /api/notifications"]
    assert request.parent_id == CALLER_SPAN and request.service == "wjp-test"
    assert by_name["wjp.ledger.write"].parent_id == request.span_id
    enqueue = by_name["wjp.enqueue"]
    assert enqueue.parent_id == request.span_id and enqueue.attributes["wjp.job_id"] == job_id
    carried = queued_message(redis_server_url, queue_name, job_id)["options"][tracing.TRACE_OPTION]
    assert carried == {"traceparent": f"00-{CALLER_TRACE}-{enqueue.span_id}-01"}


def test_off_messages_carry_no_trace(make_client, redis_server_url, queue_name):
    assert not tracing.enabled()
    answer = post(make_client(), notification(channel="log"))
    assert answer.status_code == 202
    assert tracing.TRACE_OPTION not in queued_message(redis_server_url, queue_name, answer.json["job_id"])["options"]


#: What tracing loads when on: the SDK's tracer, the OTLP exporter and its protobuf messages, the W3C propagator.
#: (redis-py itself imports OpenTelemetry's API and metrics SDK when they are installed, whatever we do.)
TRACING_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter", "opentelemetry.proto",
                   "opentelemetry.trace.propagation.tracecontext")  # fmt: skip


def test_off_no_process_loads_the_tracing_sdk():
    """Unset, the API's app, the worker's delivery path and the commands load nothing of the tracing SDK."""
    code = (
        "import sys, service.app, service.cli, actors.worker, actors.observe, actors.delivery;"
        f"print(sorted(m for m in sys.modules if m.startswith({TRACING_MODULES!r})))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    on = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    started = "from actors import tracing; assert tracing.start('probe'); import service.tracing;" + code
    result = subprocess.run([sys.executable, "-c", started], env=on, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # The probe sees them when they are loaded.
    assert "'opentelemetry.sdk.trace'" in result.stdout and "opentelemetry.exporter" in result.stdout
