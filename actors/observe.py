"""What a worker says about the job in hand: the job's fields on its log lines (`WJP_LOG_FORMAT=json`) and its
spans (`actors.tracing`): a consumer span per message, continuing the trace the message carries, with the claim
and the delivery attempt inside it."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from actors import log_format, tracing
from actors.broker import DEST_OPTION
from actors.channels.base import DeliveryError, PermanentError, TransientError
from ledger.claims import ClaimedJob
from ledger.states import Outcome


class _Observed(threading.local):
    log_token: Any = None
    span: Any = None
    context_token: Any = None


class ObserveMessages(Middleware):
    """Around each message a worker thread processes: its job's log fields and its trace."""

    def __init__(self, *, json_logs: bool) -> None:
        self.json_logs = json_logs
        self.current = _Observed()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        carried = message.options.get(tracing.TRACE_OPTION)
        job_id = message.args[0] if message.args else None
        destination = message.options.get(DEST_OPTION)
        if self.json_logs:
            self.current.log_token = log_format.set_job(
                job_id=job_id, destination=destination, trace_id=tracing.trace_id_of(carried)
            )
        if tracing.enabled():
            from opentelemetry import context, trace
            from opentelemetry.trace import SpanKind

            span = tracing.tracer().start_span(
                "wjp.process",
                context=tracing.extract(carried if isinstance(carried, dict) else None),
                kind=SpanKind.CONSUMER,
                attributes={tracing.JOB: str(job_id), "wjp.destination": destination or "",
                            "messaging.message.id": message.message_id,
                            "messaging.destination.name": message.queue_name},
            )  # fmt: skip
            self.current.span = span
            self.current.context_token = context.attach(trace.set_span_in_context(span))

    def after_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.Message, *, result: object = None, exception: Any = None
    ) -> None:
        current = self.current
        if current.span is not None:
            from opentelemetry import context
            from opentelemetry.trace import StatusCode

            if exception is not None and not isinstance(exception, dramatiq.Retry):
                current.span.record_exception(exception)
                current.span.set_status(StatusCode.ERROR, f"{type(exception).__name__}: {exception}")
            current.span.end()
            context.detach(current.context_token)
            current.span = current.context_token = None
        if current.log_token is not None:
            log_format.reset_job(current.log_token)
            current.log_token = None

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        self.after_process_message(broker, message)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        tracing.flush()


def outcome_of(error: DeliveryError | None) -> str:
    """An attempt's outcome as the ledger names it."""
    if error is None:
        return Outcome.SUCCESS.value
    if isinstance(error, TransientError) and error.throttled:
        return Outcome.THROTTLED.value
    return (Outcome.PERMANENT_ERROR if isinstance(error, PermanentError) else Outcome.TRANSIENT_ERROR).value


def claiming(job_id: uuid.UUID) -> Any:
    """The span of a message's claim of its job's attempt (the ledger statement it shares with others)."""
    return tracing.span("wjp.claim", **{tracing.JOB: str(job_id)}) if tracing.enabled() else tracing.NO_SPAN


def attempt(
    run: Callable[[ClaimedJob, float], DeliveryError | None], job: ClaimedJob, deadline: float, destination: str
) -> DeliveryError | None:
    """`run(job, deadline)`, the delivery attempt, in a span that says its channel, destination, attempt and
    outcome; the attempt's number goes on the log lines from here to the end of the message."""
    log_format.add_to_job(attempt=job.attempt)
    if not tracing.enabled():
        return run(job, deadline)
    from opentelemetry.trace import SpanKind, StatusCode

    attributes = {tracing.JOB: str(job.id), "wjp.channel": job.channel, "wjp.destination": destination,
                  "wjp.attempt": job.attempt}  # fmt: skip
    with tracing.tracer().start_as_current_span("wjp.deliver", kind=SpanKind.CLIENT, attributes=attributes) as span:
        error = run(job, deadline)
        span.set_attribute("wjp.outcome", outcome_of(error))
        if error is not None:
            span.set_status(StatusCode.ERROR, str(error)[:200])
    return error

