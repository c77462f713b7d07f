"""The operators' dashboard at /internal/dashboard, its retry button, and its sign-in page for browsers.

It shows counts, throughput, recent failures and lookup by job id or idempotency key. A browser cannot send a
bearer token with a page load, so it trades the admin token for a session cookie at the sign-in page.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import falcon

from actors.broker import BrokerUnavailable
from actors.flow.overview import Destinations, DestinationView
from actors.sessions import DashboardSessions, SessionsUnavailable
from ledger import activity, queries, transitions
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from service import dashboard_page
from service.access import DASHBOARD, LOGIN, SESSION_COOKIE, session_record, sessions_unavailable
from service.errors import ApiError
from service.resources import Context

#: Minutes of throughput shown.
THROUGHPUT_MINUTES = 10
#: Failed jobs listed.
RECENT_FAILURES = 20
#: Largest form accepted (a token, or a lookup text); read before anything else is done.
MAX_FORM_BYTES = 4096
#: How long a dashboard sign-in lasts: the server forgets the session then, whatever the browser keeps.
SESSION_LIFETIME = timedelta(hours=12)
#: Random bytes per session value: far beyond guessing.
SESSION_BYTES = 32
#: Failed sign-ins one address may make per window before the sign-in answers 429 for the rest of it.
MAX_FAILED_SIGN_INS = 10
#: Seconds of that window; it starts at the address's first failure.
FAILED_SIGN_IN_WINDOW = 60


def _html(resp: falcon.Response, page: str) -> None:
    resp.content_type = falcon.MEDIA_HTML
    resp.set_headers(dashboard_page.HEADERS)
    resp.text = page


def _same_origin(req: falcon.Request) -> None:
    """Refuse a form posted from another site. Browsers name the page's origin on every POST; the session
    cookie is SameSite=Strict already, and without an admin token this is what stops cross-site retries."""
    origin = req.get_header("Origin")
    if origin is None:
        return
    hosts = {req.get_header("Host"), req.get_header("X-Forwarded-Host")}
    if urlsplit(origin).netloc not in hosts - {None}:
        raise ApiError(falcon.HTTP_403, "forbidden", "Dashboard forms are accepted from the dashboard only.")


def _form(req: falcon.Request) -> dict[str, str]:
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media_type != falcon.MEDIA_URLENCODED:
        raise ApiError(falcon.HTTP_415, "unsupported_media_type", "Send the form as application/x-www-form-urlencoded.")
    raw = req.bounded_stream.read(MAX_FORM_BYTES + 1)
    if len(raw) > MAX_FORM_BYTES:
        raise ApiError(falcon.HTTP_413, "payload_too_large", f"The form is larger than {MAX_FORM_BYTES} bytes.")
    fields = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[-1] for name, values in fields.items()}


class Dashboard:
    """GET /internal/dashboard"""

    def __init__(self, ctx: Context, destinations: Destinations) -> None:
        self.ctx = ctx
        self.destinations = destinations

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = (req.get_param("q") or "").strip()[: activity.MAX_KEY_LENGTH]
        now = utcnow()

        def read(conn: Any) -> dashboard_page.Overview:
            return dashboard_page.Overview(
                now=now,
                stats=queries.queue_stats(conn, now=now),
                minutes=activity.throughput(conn, now=now, minutes=THROUGHPUT_MINUTES),
                failures=activity.recent_failures(conn, limit=RECENT_FAILURES),
                query=query,
                found=activity.find_jobs(conn, query) if query else None,
                notice=req.get_param("notice"),
                notice_job=req.get_param("job"),
            )

        overview = self.ctx.database.run(read)
        _html(resp, dashboard_page.render(replace(overview, destinations=self._destinations(now))))

    def _destinations(self, now: datetime) -> list[DestinationView] | None:
        """The noteworthy destinations, or None when Redis does not answer: the rest of the page still shows."""
        try:
            return self.destinations.listing(now=now)
        except BrokerUnavailable:
            return None


class DashboardRetry:
    """POST /internal/dashboard/jobs/{job_id}/retry: the retry button; back to the dashboard with a notice."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        _same_origin(req)
        query = _form(req).get("q", "")
        try:
            key = uuid.UUID(job_id)
        except ValueError:
            raise falcon.HTTPNotFound() from None
        now, extra = utcnow(), self.ctx.settings.core.max_attempts

        def retry(conn: Any) -> tuple[Dispatch | None, bool]:
            dispatch = transitions.manual_retry(conn, key, now=now, extra_attempts=extra)
            return dispatch, dispatch is not None or queries.get_job(conn, key, scope=None) is not None

        dispatch, exists = self.ctx.database.run(retry, transaction=True)
        if dispatch is not None:
            self.ctx.dispatch([dispatch])
        notice = "retried" if dispatch is not None else "not_failed" if exists else "not_found"
        params = {"q": query} if query else {}
        raise falcon.HTTPSeeOther(f"{DASHBOARD}?{urlencode({**params, 'notice': notice, 'job': str(key)})}")


class DashboardLogin:
    """GET and POST /internal/dashboard/login: trade the admin token for a session of its own."""

    def __init__(self, ctx: Context, sessions: DashboardSessions, *, lifetime: timedelta = SESSION_LIFETIME) -> None:
        self.token = ctx.settings.admin_token
        self.sessions = sessions
        self.lifetime = lifetime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self.token is None:
            raise falcon.HTTPSeeOther(DASHBOARD)
        _html(resp, dashboard_page.render_login(failed=req.get_param("failed") is not None))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        _same_origin(req)
        given = _form(req).get("token", "")
        if self.token is None:
            raise falcon.HTTPSeeOther(DASHBOARD)
        # The address the connection came from: behind a reverse proxy, the proxy's (README.md, Dashboard).
        address = req.remote_addr or ""
        try:
            failed, window_left = self.sessions.failures(address)
            if failed >= MAX_FAILED_SIGN_INS:
                raise ApiError(
                    falcon.HTTP_429,
                    "rate_limited",
                    f"Too many failed sign-ins from this address; try again in {window_left} s.",
                    headers={"Retry-After": str(max(1, window_left))},
                )
            # Constant-time, like every comparison with the token.
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                self.sessions.fail(address, window_seconds=FAILED_SIGN_IN_WINDOW)
                raise falcon.HTTPSeeOther(f"{LOGIN}?failed=1")
            session = secrets.token_urlsafe(SESSION_BYTES)
            lifetime = int(self.lifetime.total_seconds())
            self.sessions.start(session, session_record(session, self.token), lifetime_seconds=lifetime)
        except SessionsUnavailable:
            raise sessions_unavailable() from None
        resp.set_cookie(
            SESSION_COOKIE,
            session,
            max_age=lifetime,
            path=DASHBOARD,
            secure=req.forwarded_scheme == "https",
            http_only=True,
            same_site="Strict",
        )
        resp.status = falcon.HTTP_303
        resp.location = DASHBOARD


class DashboardLogout:
    """POST /internal/dashboard/logout: end the browser's session on the server and clear its cookie."""

    def __init__(self, ctx: Context, sessions: DashboardSessions) -> None:
        self.token = ctx.settings.admin_token
        self.sessions = sessions

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        _same_origin(req)
        session = req.cookies.get(SESSION_COOKIE)
        if session:
            try:
                self.sessions.end(session)
            except SessionsUnavailable:
                raise sessions_unavailable() from None
        resp.unset_cookie(SESSION_COOKIE, path=DASHBOARD)
        resp.status = falcon.HTTP_303
        resp.location = DASHBOARD if self.token is None else LOGIN
