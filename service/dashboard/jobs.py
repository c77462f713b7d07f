"""GET /internal/dashboard/jobs (every producer's jobs, filtered, newest first, page by page) and
GET /internal/dashboard/jobs/{job_id} (one job: its fields, its attempts as a timeline, its callback)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import falcon

from ledger import browse, callbacks, queries
from ledger.browse import JobFilters, Position
from ledger.callbacks import CallbackView
from ledger.states import Status
from service.dashboard import forms, jobs_page
from service.dashboard.forms import invalid, job_notice, moment, text
from service.dashboard.layout import answer
from service.errors import ApiError
from service.resources import Context

#: Jobs per page.
PAGE_SIZE = 50
#: Separates the two halves of a page cursor: the last job's created_at and id.
CURSOR_SEPARATOR = "~"


def filters_of(req: falcon.Request) -> JobFilters:
    """The listing's filters from the page's query: empty ones are left out."""
    status = text(req.get_param("status"))
    if status is not None and status not in Status.__members__:
        raise invalid("status", f"expected one of {', '.join(s.value for s in Status)}")
    return JobFilters(
        status=Status(status) if status else None,
        channel=text(req.get_param("channel")),
        destination=text(req.get_param("destination")),
        created_after=moment("from", req.get_param("from")),
        created_before=moment("to", req.get_param("to")),
    )


def cursor(position: Position) -> str:
    return f"{position.created_at.isoformat()}{CURSOR_SEPARATOR}{position.job_id}"


def _position(raw: str | None) -> Position | None:
    if not raw:
        return None
    created, _, job = raw.partition(CURSOR_SEPARATOR)
    try:
        return Position(datetime.fromisoformat(created), uuid.UUID(job))
    except ValueError:
        raise invalid("after", "it is not a cursor this page handed out") from None


class JobsList:
    """GET /internal/dashboard/jobs"""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        filters = filters_of(req)
        after = _position(req.get_param("after"))
        found = self.ctx.database.run(lambda conn: browse.browse_jobs(conn, filters, limit=PAGE_SIZE, after=after))
        listing = jobs_page.Listing(
            filters=filters,
            jobs=found.jobs,
            next_cursor=None if found.after is None else cursor(found.after),
            paged=after is not None,
            channels=sorted(self.ctx.channels),
            back=req.relative_uri,
            notice=job_notice(req),
        )
        answer(resp, jobs_page.render_list(listing))


class JobPage:
    """GET /internal/dashboard/jobs/{job_id}"""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        key = forms.job_id(job_id)

        def read(conn: Any) -> tuple[queries.JobView | None, list[queries.AttemptView], CallbackView | None]:
            job = queries.get_job(conn, key, scope=None)
            return job, queries.list_attempts(conn, key), callbacks.callback_view(conn, key)

        job, attempts, callback = self.ctx.database.run(read)
        if job is None:
            raise ApiError(falcon.HTTP_404, "not_found", "No job has this id.")
        page = jobs_page.render_job(job, attempts, callback, back=req.relative_uri, notice_text=job_notice(req))
        answer(resp, page)
