"""The Falcon app factory: it only wires routes, error handling and middleware together."""

from __future__ import annotations

import falcon

from actors.broker import Dispatcher, make_broker
from actors.channels import build_channels
from ledger.database import Database
from service import errors
from service.access import AdminTokenMiddleware
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


def create_app(
    settings: ServiceSettings, *, database: Database | None = None, dispatcher: Dispatcher | None = None
) -> falcon.App:
    """Build the API. Tests pass their own ledger and dispatcher; production builds them from settings."""
    core = settings.core
    ctx = Context(
        settings=settings,
        database=database or Database(core.database_url),
        dispatcher=dispatcher or Dispatcher(make_broker(core.redis_url), core.queue),
        channels=build_channels(core.channels),
    )
    middleware = [AdminTokenMiddleware(settings.admin_token)] if settings.admin_token else []
    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    errors.register(app)
    app.add_route("/api/notifications", NotificationCollection(ctx))
    app.add_route("/api/notifications/{job_id}", NotificationItem(ctx))
    app.add_route("/api/notifications/{job_id}/attempts", NotificationAttempts(ctx))
    app.add_route("/internal/queue/stats", QueueStats(ctx))
    app.add_route("/internal/notifications/{job_id}/retry", NotificationRetry(ctx))
    app.add_route("/healthz", Health())
    app.add_route("/readyz", Ready(ctx))
    app.add_route("/openapi.json", OpenApiDocument(sorted(ctx.channels)))
    return app


def create_app_from_env() -> falcon.App:
    """Entry point for gunicorn (`service.app:create_app_from_env()`), called in each worker after fork."""
    return create_app(ServiceSettings.from_env())
