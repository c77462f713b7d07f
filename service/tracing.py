"""The span of each HTTP request the API answers (imported only when tracing is on: `actors.tracing`)."""

from __future__ import annotations

import falcon
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, StatusCode

from actors import tracing


class TraceRequests:
    """Falcon middleware: a server span per request, current while it is handled, continuing the caller's trace
    when the request carries a W3C `traceparent` header."""

    async def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        carrier = {name: value for name in ("traceparent", "tracestate") if (value := req.get_header(name)) is not None}
        span = tracing.tracer().start_span(
            req.method,
            context=tracing.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": req.method, "url.path": req.path},
        )
        req.context.trace_span = span
        req.context.trace_token = context.attach(trace.set_span_in_context(span))

    async def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict
    ) -> None:
        span = req.context.get("trace_span")
        if span is not None and req.uri_template:
            span.update_name(f"{req.method} {req.uri_template}")
            span.set_attribute("http.route", req.uri_template)
            if "job_id" in params:  # a job's own request: a retry it sends continues the job's trace from here
                span.set_attribute(tracing.JOB, str(params["job_id"]))

    async def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        span = req.context.get("trace_span")
        if span is None:
            return
        status = resp.status_code
        span.set_attribute("http.response.status_code", status)
        if isinstance(resp.media, dict) and "job_id" in resp.media:
            span.set_attribute(tracing.JOB, str(resp.media["job_id"]))
        if status >= 500:
            span.set_status(StatusCode.ERROR)
        span.end()
        context.detach(req.context.trace_token)
