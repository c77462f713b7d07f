"""OpenTelemetry traces, configured by the standard `OTEL_*` variables; off when they name no exporter.

Off, nothing of OpenTelemetry is imported and every hook here is a test of one global. On, each process exports
its spans over OTLP/HTTP (protobuf) from a batch processor, and a job's message carries the W3C trace context of
the span that sent it (the `wjp_trace` option), so one notification is one trace from its POST to its outcome.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

#: The message option carrying the sender's W3C trace context (`traceparent`, and `tracestate` when there is one).
TRACE_OPTION = "wjp_trace"
#: The attribute naming the job a span is about, on every span of a job's work.
JOB = "wjp.job_id"
#: The protocol the installed exporter speaks; OTLP/gRPC and OTLP/HTTP JSON are not installed.
PROTOCOL = "http/protobuf"
NO_SPAN: contextlib.AbstractContextManager[None] = contextlib.nullcontext()

_provider: TracerProvider | None = None
_tracer: Tracer | None = None
#: The request context of each job an API thread is accepting, for the spans the intake batch thread makes for it.
_carried: dict[uuid.UUID, Context] = {}


def _first(environ: Mapping[str, str], *names: str) -> tuple[str, str]:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return names[-1], ""


def configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the variables ask for traces: `OTEL_TRACES_EXPORTER=otlp` or an OTLP endpoint, unless
    `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. A value this process cannot honour is a
    `SettingsError` naming its variable."""
    from actors.settings import SettingsError

    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    if exporter not in ("", "otlp"):
        raise SettingsError(f"OTEL_TRACES_EXPORTER={exporter!r}: only otlp (or none) is supported")
    name, endpoint = _first(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    if not exporter and not endpoint:
        return False
    if endpoint and not endpoint.lower().startswith(("http://", "https://")):
        raise SettingsError(f"{name}={endpoint!r} is not an http:// or https:// URL")
    name, protocol = _first(environ, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol != PROTOCOL:
        raise SettingsError(f"{name}={protocol!r}: only {PROTOCOL} (OTLP over HTTP) is supported")
    return True


def start(service_name: str) -> bool:
    """Start exporting this process's spans if the variables ask for it (after any fork: the batch processor
    has a thread); whether tracing is on. `OTEL_SERVICE_NAME` wins over `service_name`. The exporter reads the
    variables it knows itself (endpoint, headers, timeout, compression; `OTEL_BSP_*`, `OTEL_TRACES_SAMPLER`)."""
    global _provider, _tracer
    if _tracer is not None:
        return True
    if not configured(os.environ):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    # Our own provider, not the global one: nothing else in the process is instrumented, and a test process can
    # start and stop it more than once.
    _provider = TracerProvider(resource=resource)
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _tracer = _provider.get_tracer("worker-job-processor")
    return True


def stop() -> None:
    """Export what is pending and turn tracing off."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider, _tracer = None, None


def flush(timeout_ms: int = 5000) -> None:
    """Export the spans still pending: a Dramatiq worker process ends with `os._exit`, which runs no atexit."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def enabled() -> bool:
    return _tracer is not None


def tracer() -> Tracer:
    assert _tracer is not None, "tracing is off"
    return _tracer


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A child of the current span, current while the block runs; nothing when tracing is off."""
    if _tracer is None:
        return NO_SPAN
    return _tracer.start_as_current_span(name, attributes=attributes)


def current_trace_id() -> str | None:
    """The current span's trace id (32 hex digits), if tracing is on and a span is current."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def trace_id_of(carried: object) -> str | None:
    """The trace id in a message's `wjp_trace` option, read without OpenTelemetry (for log lines)."""
    if isinstance(carried, dict):
        parts = str(carried.get("traceparent", "")).split("-")
        if len(parts) == 4 and len(parts[1]) == 32:
            return parts[1]
    return None


def extract(carrier: Mapping[str, str] | None) -> Context | None:
    """The context a W3C carrier (a message's `wjp_trace`, lower-cased HTTP headers) continues, if any."""
    if not carrier:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(carrier)


def _inject(span: Span) -> dict[str, str]:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(span))
    return carrier


def carrying(job_id: uuid.UUID) -> contextlib.AbstractContextManager[None]:
    """While an API thread waits for its job to be accepted: the spans the intake batch makes for that job are
    children of the thread's current span (its request). Nothing when tracing is off."""
    return NO_SPAN if _tracer is None else _carrying(job_id)


@contextlib.contextmanager
def _carrying(job_id: uuid.UUID) -> Iterator[None]:
    from opentelemetry import context

    _carried[job_id] = context.get_current()
    try:
        yield
    finally:
        _carried.pop(job_id, None)


class Spans:
    """Spans of one batch, one per job, each a child of its job's carried context (else of the current one);
    ended together when the block ends, with its error if it raised."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def start(self, name: str, job_id: uuid.UUID, kind: str = "INTERNAL", **attributes: Any) -> Span:
        from opentelemetry.trace import SpanKind

        span = tracer().start_span(
            name, context=_carried.get(job_id), kind=SpanKind[kind], attributes={JOB: str(job_id), **attributes}
        )
        self.spans.append(span)
        return span

    def __enter__(self) -> Spans:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: object) -> None:
        from opentelemetry.trace import StatusCode

        for span in self.spans:
            if error is not None:
                span.record_exception(error)
                span.set_status(StatusCode.ERROR, f"{type(error).__name__}: {error}")
            span.end()


def each(name: str, items: list[Any]) -> contextlib.AbstractContextManager[Any]:
    """A span per item (each with a `job_id`) of a batch the block processes; nothing when tracing is off."""
    if _tracer is None:
        return NO_SPAN
    spans = Spans()
    for item in items:
        spans.start(name, item.job_id)
    return spans


class Enqueued(Spans):
    """The spans of the messages one send enqueues: each message carries its own span's context.

    A message sent for its job's own work (its POST, its failed attempt's retry) continues the job's trace. One
    sent while other work is current (a destination reset releasing jobs, a worker's flow control releasing
    another job) starts a trace of its own, linked to that work's span: no trace holds another job's attempts."""

    def add(self, job_id: uuid.UUID, seq: int, queue: str, options: MutableMapping[str, object]) -> None:
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.trace import SpanKind

        attributes = {JOB: str(job_id), "wjp.dispatch_seq": seq, "messaging.destination.name": queue}
        parent, links = _carried.get(job_id), []
        current = trace.get_current_span()
        if parent is None and current.get_span_context().is_valid and _job_of(current) != str(job_id):
            parent, links = Context(), [trace.Link(current.get_span_context())]
        span = tracer().start_span("wjp.enqueue", context=parent, kind=SpanKind.PRODUCER, links=links,
                                   attributes=attributes)  # fmt: skip
        self.spans.append(span)
        options[TRACE_OPTION] = _inject(span)


def _job_of(span: Span) -> object:
    """The job a span of ours is about (None for one that says none, or records nothing)."""
    return (getattr(span, "attributes", None) or {}).get(JOB)


def enqueued() -> Enqueued | None:
    return None if _tracer is None else Enqueued()
