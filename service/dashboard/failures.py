"""GET /internal/dashboard/failures (FAILED jobs grouped by destination and error) and the bulk retry: first a
page that says how many jobs it will touch (GET, or POST for an error too long for an address:
…/failures/retry), then the retry itself (POST …/failures/retry/run), in batches."""

from __future__ import annotations

from collections.abc import Callable

import falcon

from ledger import browse, bulk_retry
from ledger.bulk_retry import FailedJobs
from ledger.timestamps import utcnow
from service.dashboard import failures_page
from service.dashboard.forms import exact_text, invalid, moment, read_form, text, with_params
from service.dashboard.layout import BASE, answer
from service.resources import Context

PAGE = f"{BASE}/failures"
#: Groups listed, the largest first.
MAX_GROUPS = 100
#: Jobs re-queued per transaction: bounds each one's locks, as `wjp retry` does.
BULK_RETRY_BATCH = 500


def chosen(get: Callable[[str], str | None], *, failed_before: str | None = None) -> FailedJobs:
    """The failed jobs a bulk retry chooses, from a query or form (`get` reads one field); they failed before
    `failed_before` (RFC 3339, pinned by the confirmation), else before now."""
    before = moment("failed_before", failed_before) if failed_before is not None else utcnow()
    if before is None:
        raise invalid("failed_before", "it is missing")
    return FailedJobs(
        failed_before=before,
        channel=text(get("channel")),
        destination=text(get("destination")),
        error=exact_text("error", get("error")),
        created_after=moment("from", get("from")),
        created_before=moment("to", get("to")),
    )


class FailuresPage:
    """GET /internal/dashboard/failures"""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        groups = self.ctx.database.run(lambda conn: browse.failure_groups(conn, limit=MAX_GROUPS))
        retried = req.get_param_as_int("retried", min_value=0)
        answer(resp, failures_page.render_groups(groups, retried=retried, channels=sorted(self.ctx.channels)))


class BulkRetryConfirm:
    """GET and POST /internal/dashboard/failures/retry: how many failed jobs the filters choose, and the button
    that retries exactly those (the ones that had failed when this page was shown)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._confirm(resp, chosen(req.get_param))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        # Nothing is changed here: POST only carries an error text too long for an address.
        self._confirm(resp, chosen(read_form(req).get))

    def _confirm(self, resp: falcon.Response, jobs: FailedJobs) -> None:
        count = self.ctx.database.run(lambda conn: bulk_retry.count_failed(conn, jobs))
        answer(resp, failures_page.render_confirm(jobs, count))


class BulkRetryRun:
    """POST /internal/dashboard/failures/retry/run: retry the confirmed failed jobs, in batches, each sent to
    the queue once its batch is committed; back to the failures with how many were retried."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = read_form(req)
        jobs = chosen(form.get, failed_before=form.get("failed_before") or "")
        now, extra = utcnow(), self.ctx.settings.core.max_attempts
        retried = 0
        while True:
            batch = self.ctx.database.run(
                lambda conn: bulk_retry.retry_failed(conn, jobs, now=now, extra_attempts=extra, limit=BULK_RETRY_BATCH),
                transaction=True,
            )
            # Best effort, as every dispatch after a commit: the reconciler sends what Redis missed.
            self.ctx.dispatch(batch)
            retried += len(batch)
            if len(batch) < BULK_RETRY_BATCH:
                break
        raise falcon.HTTPSeeOther(with_params(PAGE, retried=str(retried)))
