"""The operators' dashboard under /internal/dashboard: server-rendered HTML that needs no JavaScript, every page
and form behind the admin token (or a browser's session), every form accepted from the dashboard only."""

from __future__ import annotations

import falcon

from actors.flow.overview import Destinations
from actors.sessions import DashboardSessions
from service.dashboard.destinations import DestinationLimits, DestinationReset, DestinationsPage
from service.dashboard.failures import BulkRetryConfirm, BulkRetryRun, FailuresPage
from service.dashboard.health import HealthPage
from service.dashboard.jobs import JobPage, JobsList
from service.dashboard.layout import BASE
from service.dashboard.overview import Dashboard, DashboardRetry
from service.dashboard.sign_in import DashboardLogin, DashboardLogout
from service.resources import Context


def add_routes(app: falcon.App, ctx: Context, destinations: Destinations, sessions: DashboardSessions) -> None:
    app.add_route(BASE, Dashboard(ctx, destinations))
    app.add_route(f"{BASE}/login", DashboardLogin(ctx, sessions))
    app.add_route(f"{BASE}/logout", DashboardLogout(ctx, sessions))
    app.add_route(f"{BASE}/jobs", JobsList(ctx))
    app.add_route(f"{BASE}/jobs/{{job_id}}", JobPage(ctx))
    app.add_route(f"{BASE}/jobs/{{job_id}}/retry", DashboardRetry(ctx))
    app.add_route(f"{BASE}/failures", FailuresPage(ctx))
    app.add_route(f"{BASE}/failures/retry", BulkRetryConfirm(ctx))
    app.add_route(f"{BASE}/failures/retry/run", BulkRetryRun(ctx))
    app.add_route(f"{BASE}/destinations", DestinationsPage(destinations))
    app.add_route(f"{BASE}/destinations/limits", DestinationLimits(destinations))
    app.add_route(f"{BASE}/destinations/reset", DestinationReset(destinations))
    app.add_route(f"{BASE}/health", HealthPage(ctx))
