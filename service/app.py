"""The Falcon app factory: it only wires routes, error handling and middleware together."""

from __future__ import annotations

from typing import Any

import falcon
import falcon.asgi
import falcon.media
import msgspec

from actors import tracing
from actors.async_redis import AsyncRedis
from actors.broker import Dispatcher, make_broker
from actors.channels import build_channels
from actors.flow import Gate
from actors.flow.overview import Destinations
from actors.ratelimit import RateLimiter
from actors.sessions import DashboardSessions
from actors.start_up import freeze_start_up_objects
from ledger.database import Database
from service import dashboard, errors, multiproc
from service.access import AdminTokenMiddleware, ApiKeyMiddleware
from service.batch import NotificationBatch
from service.destinations import DestinationCollection, DestinationItem
from service.metrics import Metrics
from service.offload import Offload, Threaded
from service.openapi import OpenApiDocument
from service.resources import (
    Context,
    Health,
    NotificationAttempts,
    NotificationCollection,
    NotificationItem,
    NotificationRetry,
    QueueStats,
    Ready,
)
from service.settings import ServiceSettings

#: Threads per API process for blocking calls (`service.offload`), and the ledger connections they share.
OFFLOAD_THREADS = 8


def create_app(
    settings: ServiceSettings,
    *,
    database: Database | None = None,
    dispatcher: Dispatcher | None = None,
    gate: Gate | None = None,
) -> falcon.asgi.App:
    """Build the API, an ASGI app. Tests pass their own ledger, dispatcher and gate; production builds them from
    settings. Blocking calls run on the offload threads; the routes that are hot or must stay prompt (a single
    POST, a batch, /healthz) are coroutines, the others plain functions run on those threads (`Threaded`)."""
    core = settings.core
    offload = Offload(OFFLOAD_THREADS)
    ctx = Context(
        settings=settings,
        # A connection per offload thread, one for the rare transactions (cancel, retry: they take turns), and the
        # kept ones of the intake group's and the batch group's threads; README.md, "Running in production", sums
        # them up per process.
        database=database
        or Database(
            core.database_url,
            pool_size=OFFLOAD_THREADS,
            transactions=1,
            kept=2,
            prepared_statements=core.prepared_statements,
        ),
        dispatcher=dispatcher or Dispatcher(make_broker(core.redis_url), core.queue),
        channels=build_channels(core.channels),
        offload=offload,
    )
    # The rate limits' round trips go from the loop (no thread hand-off per request), on clients of their own.
    limiter = RateLimiter(AsyncRedis(ctx.dispatcher.broker.redis_url))
    # The destinations' state lives in the broker's Redis, read through the same connections.
    destinations = Destinations(ctx.database, gate or Gate(ctx.dispatcher.broker.client), core.flow, ctx.dispatcher)
    # Per queue, like the queue's own keys: deployments sharing one Redis keep their sign-ins apart.
    sessions = DashboardSessions(ctx.dispatcher.broker.client, prefix=f"wjp:dashboard:{core.queue}:")
    middleware: list[object] = [
        ApiKeyMiddleware(ctx.database, offload, limiter=limiter, default_rate=settings.api_key_rate)
    ]
    if settings.admin_token:
        middleware.insert(0, AdminTokenMiddleware(settings.admin_token, sessions, offload))
    if tracing.enabled():
        from service.tracing import TraceRequests  # OpenTelemetry is imported only when tracing is on

        middleware.insert(0, TraceRequests())
    app = _ThreadedRoutes(offload, middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    # Response bodies through msgspec: the same JSON (UTF-8, not escaped) ~13 × faster than json.dumps, which took
    # ~3 % of the API's GIL-held samples under single POSTs (bench/README.md).
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = falcon.media.JSONHandler(dumps=msgspec.json.encode)
    errors.register(app)
    app.add_route("/api/notifications", NotificationCollection(ctx))
    app.add_route("/api/notifications/batch", NotificationBatch(ctx))
    app.add_route("/api/notifications/{job_id}", NotificationItem(ctx))
    app.add_route("/api/notifications/{job_id}/attempts", NotificationAttempts(ctx))
    app.add_route("/internal/queue/stats", QueueStats(ctx))
    app.add_route("/internal/notifications/{job_id}/retry", NotificationRetry(ctx))
    app.add_route("/internal/destinations", DestinationCollection(destinations))
    app.add_route("/internal/destinations/{key}", DestinationItem(destinations))
    dashboard.add_routes(app, ctx, destinations, sessions)
    app.add_route("/metrics", Metrics(ctx.database, settings.metrics_dir, destinations))
    app.add_route("/healthz", Health())
    app.add_route("/readyz", Ready(ctx))
    app.add_route("/openapi.json", OpenApiDocument(sorted(ctx.channels)))
    return app


class _ThreadedRoutes(falcon.asgi.App):
    """An ASGI app whose every route is served through `Threaded`: coroutine responders as they are, plain ones on
    the offload threads."""

    def __init__(self, offload: Offload, **options: Any) -> None:
        super().__init__(**options)
        self.offload = offload

    def add_route(self, uri_template: str, resource: object, **kwargs: Any) -> None:
        super().add_route(uri_template, Threaded(resource, self.offload), **kwargs)


def create_app_from_env() -> falcon.asgi.App:
    """Entry point for gunicorn (`service.app:create_app_from_env()`), called in each worker after fork."""
    settings = ServiceSettings.from_env()
    tracing.start("wjp-api")
    if settings.metrics_dir:
        multiproc.name_files_by_slot(settings.metrics_dir)
    app = create_app(settings)
    freeze_start_up_objects()
    return app

