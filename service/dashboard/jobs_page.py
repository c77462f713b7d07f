"""The Jobs pages' HTML: the filtered listing with its pages, and one job with its attempts as a timeline."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from ledger.browse import JobFilters
from ledger.callbacks import CallbackView
from ledger.queries import AttemptView, JobView
from ledger.states import Status
from service.callbacks import callback_document
from service.dashboard.layout import jobs_table, link, notice, page, retry_form, seconds_text, time_tag


@dataclass(frozen=True)
class Listing:
    filters: JobFilters
    jobs: list[JobView]
    #: The next page's cursor; None on the last page.
    next_cursor: str | None
    #: Whether this is a page past the first.
    paged: bool
    #: The channels this API knows, offered by the channel filter.
    channels: list[str]
    #: This page's own address, where its Retry buttons come back to.
    back: str
    notice: str | None = None


def _local(moment: datetime | None) -> str:
    """A time as a `datetime-local` field shows it (UTC, as the page says)."""
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _params(filters: JobFilters) -> dict[str, str | None]:
    return {
        "status": filters.status.value if filters.status else None,
        "channel": filters.channel,
        "destination": filters.destination,
        "from": _local(filters.created_after) or None,
        "to": _local(filters.created_before) or None,
    }


def _options(values: list[str], chosen: str | None, anything: str) -> str:
    options = [f'<option value="">{anything}</option>']
    options += [
        f'<option value="{escape(value)}"{" selected" if value == chosen else ""}>{escape(value)}</option>'
        for value in values
    ]
    return "".join(options)


def _filter_form(listing: Listing) -> str:
    f = listing.filters
    statuses = _options([s.value for s in Status], f.status.value if f.status else None, "any")
    channels = _options(listing.channels, f.channel, "any")
    return (
        f'<form id="job-filters" class="filters" method="get" action="{link("/jobs")}">'
        f'<label>status <select name="status" id="filter-status">{statuses}</select></label>'
        f'<label>channel <select name="channel" id="filter-channel">{channels}</select></label>'
        f'<label>destination <input name="destination" id="filter-destination" value="{escape(f.destination or "")}"'
        ' placeholder="webhook:example.com:443"></label>'
        f'<label>created from (UTC) <input type="datetime-local" step="1" name="from" id="filter-from" '
        f'value="{_local(f.created_after)}"></label>'
        f'<label>created before (UTC) <input type="datetime-local" step="1" name="to" id="filter-to" '
        f'value="{_local(f.created_before)}"></label>'
        f'<button type="submit">Filter</button> <a href="{link("/jobs")}">Clear</a></form>'
    )


def render_list(listing: Listing) -> str:
    params = _params(listing.filters)
    table = (
        jobs_table(listing.jobs, listing.back, table_id="job-list")
        if listing.jobs
        else '<p class="muted" id="no-jobs">No job matches these filters.</p>'
    )
    pages = []
    if listing.paged:
        pages.append(f'<a id="first-page" href="{link("/jobs", **params)}">Newest</a>')
    if listing.next_cursor is not None:
        pages.append(f'<a id="next-page" href="{link("/jobs", **params, after=listing.next_cursor)}">Older →</a>')
    bulk = ""
    if listing.filters.status is Status.FAILED:
        chosen = {k: v for k, v in params.items() if k != "status"}
        bulk = (
            f'<p><a id="retry-matching" href="{link("/failures/retry", **chosen)}">'
            "Retry every failed job matching these filters…</a> (a page first says how many)</p>"
        )
    return page(
        "jobs",
        f"{notice(listing.notice)}<main><h2>Jobs, newest first</h2>{_filter_form(listing)}{bulk}{table}"
        f'<nav aria-label="Pages" class="pages">{" ".join(pages)}</nav></main>',
        current="/jobs",
    )


def _fields(job: JobView) -> str:
    shown = [
        ("id", f"<code>{job.id}</code>"),
        ("status", f'<strong id="job-status">{job.status.value}</strong>'),
        ("channel", escape(job.channel)),
        ("destination", f'<a href="{link("/jobs", destination=job.destination)}"><code>{escape(job.destination)}'
                        "</code></a>"),
        ("recipient", escape(job.recipient)),
        ("idempotency key", escape(job.idempotency_key)),
        ("subject", escape(job.subject or "")),
        ("metadata", f"<code>{escape(json.dumps(job.metadata))}</code>" if job.metadata else ""),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("created", time_tag(job.created_at)),
        ("send at", time_tag(job.send_at)),
        ("next attempt", time_tag(job.next_attempt_at)),
        ("completed", time_tag(job.completed_at)),
        ("last change", time_tag(job.updated_at)),
        ("last error", f'<span class="error">{escape(job.last_error)}</span>' if job.last_error else ""),
    ]  # fmt: skip
    rows = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in shown if value)
    return f'<dl class="fields" id="job-fields">{rows}</dl>'


def _timeline(attempts: list[AttemptView]) -> str:
    if not attempts:
        return '<p class="muted" id="no-attempts">No attempt yet.</p>'
    items = []
    for attempt in attempts:
        took = (
            f" · took {seconds_text((attempt.finished_at - attempt.started_at).total_seconds())}"
            if attempt.finished_at
            else ""
        )
        outcome = attempt.outcome or "running"
        items.append(
            f'<li data-attempt="{attempt.number}" data-outcome="{escape(outcome)}">'
            f"<strong>Attempt {attempt.number}</strong> · {escape(outcome)} · started {time_tag(attempt.started_at)}"
            f"{took} · worker <code>{escape(attempt.worker or '')}</code>"
            + (f'<div class="error">{escape(attempt.error)}</div>' if attempt.error else "")
            + "</li>"
        )
    return f'<ol class="timeline" id="attempts">{"".join(items)}</ol>'


def _callback(callback: CallbackView | None) -> str:
    if callback is None:
        return ""
    # The API's words for where the delivery stands (the `callback` object of a job's GET body).
    document = callback_document(callback)
    shown = {
        "URL": callback.url,
        "reports": "(the job has not finished)" if callback.event is None else callback.event.value,
        "delivery": document["status"],
        "attempts": str(callback.attempts),
        "last error": callback.last_error or "",
    }
    rows = "".join(f"<dt>{escape(name)}</dt><dd>{escape(value)}</dd>" for name, value in shown.items())
    return f'<section id="callback"><h2>Callback</h2><dl class="fields">{rows}</dl></section>'


def render_job(
    job: JobView, attempts: list[AttemptView], callback: CallbackView | None, *, back: str, notice_text: str | None
) -> str:
    return page(
        f"job {job.id}",
        f'{notice(notice_text)}<main><h2>Job <code>{job.id}</code> {retry_form(job, back)}</h2>{_fields(job)}'
        f'<section id="timeline"><h2>Attempts</h2>{_timeline(attempts)}</section>{_callback(callback)}</main>',
        current="/jobs",
    )
