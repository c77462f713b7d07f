"""GET /internal/dashboard: counts, throughput, recent failures and lookup; and the Retry button of any job."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import falcon

from actors.broker import BrokerUnavailable
from actors.flow.overview import Destinations, DestinationView
from ledger import activity, queries, transitions
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from service.dashboard import forms, overview_page
from service.dashboard.forms import back_to, job_notice, read_form, with_params
from service.dashboard.layout import answer
from service.resources import Context

#: Minutes of throughput shown.
THROUGHPUT_MINUTES = 10
#: Failed jobs listed.
RECENT_FAILURES = 20


class Dashboard:
    """GET /internal/dashboard"""

    def __init__(self, ctx: Context, destinations: Destinations) -> None:
        self.ctx = ctx
        self.destinations = destinations

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = (req.get_param("q") or "").strip()[: activity.MAX_KEY_LENGTH]
        now = utcnow()

        def read(conn: Any) -> overview_page.Overview:
            return overview_page.Overview(
                now=now,
                stats=queries.queue_stats(conn, now=now),
                minutes=activity.throughput(conn, now=now, minutes=THROUGHPUT_MINUTES),
                failures=activity.recent_failures(conn, limit=RECENT_FAILURES),
                query=query,
                found=activity.find_jobs(conn, query) if query else None,
                notice=job_notice(req),
            )

        overview = self.ctx.database.run(read)
        answer(resp, overview_page.render(replace(overview, destinations=self._destinations(now))))

    def _destinations(self, now: datetime) -> list[DestinationView] | None:
        """The noteworthy destinations, or None when Redis does not answer: the rest of the page still shows."""
        try:
            return self.destinations.listing(now=now)
        except BrokerUnavailable:
            return None


class DashboardRetry:
    """POST /internal/dashboard/jobs/{job_id}/retry: a job's Retry button; back to the page it was pressed on
    (the form's `back`), with a notice."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        back = back_to(read_form(req).get("back"))
        key = forms.job_id(job_id)
        now, extra = utcnow(), self.ctx.settings.core.max_attempts

        def retry(conn: Any) -> tuple[Dispatch | None, bool]:
            dispatch = transitions.manual_retry(conn, key, now=now, extra_attempts=extra)
            return dispatch, dispatch is not None or queries.get_job(conn, key, scope=None) is not None

        dispatch, exists = self.ctx.database.run(retry, transaction=True)
        if dispatch is not None:
            self.ctx.dispatch([dispatch])
        notice = "retried" if dispatch is not None else "not_failed" if exists else "not_found"
        raise falcon.HTTPSeeOther(with_params(back, notice=notice, job=str(key)))

