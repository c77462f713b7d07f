"""The dashboard's sign-in and sign-out. A browser cannot send a bearer token with a page load, so it trades the
admin token for a session cookie of its own at the sign-in page."""

from __future__ import annotations

import hmac
import secrets
from datetime import timedelta

import falcon

from actors.sessions import DashboardSessions, SessionsUnavailable
from service.access import DASHBOARD, LOGIN, SESSION_COOKIE, session_record, sessions_unavailable
from service.dashboard import overview_page
from service.dashboard.forms import read_form, same_origin
from service.dashboard.layout import answer
from service.errors import ApiError
from service.resources import Context

#: How long a dashboard sign-in lasts: the server forgets the session then, whatever the browser keeps.
SESSION_LIFETIME = timedelta(hours=12)
#: Random bytes per session value: far beyond guessing.
SESSION_BYTES = 32
#: Failed sign-ins one address may make per window before the sign-in answers 429 for the rest of it.
MAX_FAILED_SIGN_INS = 10
#: Seconds of that window; it starts at the address's first failure.
FAILED_SIGN_IN_WINDOW = 60


class DashboardLogin:
    """GET and POST /internal/dashboard/login: trade the admin token for a session of its own."""

    def __init__(self, ctx: Context, sessions: DashboardSessions, *, lifetime: timedelta = SESSION_LIFETIME) -> None:
        self.token = ctx.settings.admin_token
        self.sessions = sessions
        self.lifetime = lifetime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self.token is None:
            raise falcon.HTTPSeeOther(DASHBOARD)
        answer(resp, overview_page.render_login(failed=req.get_param("failed") is not None))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = read_form(req).get("token", "")
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
        same_origin(req)
        session = req.cookies.get(SESSION_COOKIE)
        if session:
            try:
                self.sessions.end(session)
            except SessionsUnavailable:
                raise sessions_unavailable() from None
        resp.unset_cookie(SESSION_COOKIE, path=DASHBOARD)
        resp.status = falcon.HTTP_303
        resp.location = DASHBOARD if self.token is None else LOGIN
