"""The Failures pages' HTML: FAILED jobs grouped by destination and error, and the bulk retry's confirmation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from html import escape

from ledger.browse import FailureGroup
from ledger.bulk_retry import FailedJobs
from service.dashboard.layout import BASE, ERROR_SHOWN, link, notice, page, time_tag


def _jobs(count: int) -> str:
    return "1 failed job was" if count == 1 else f"{count} failed jobs were"


def _hidden(name: str, value: str | None) -> str:
    return "" if value is None else f'<input type="hidden" name="{name}" value="{escape(value)}">'


def _error_field(error: str | None) -> str:
    # As a JSON string: see forms.exact_text.
    return "" if error is None else _hidden("error", json.dumps(error))


def _rfc3339(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def _group_row(index: int, group: FailureGroup) -> str:
    error = group.error or ""
    shown = error if len(error) <= ERROR_SHOWN else error[:ERROR_SHOWN] + "…"
    # A form, not a link: an error of up to 2,000 characters does not fit every server's limit on an address.
    retry = (
        f'<form class="inline" method="post" action="{BASE}/failures/retry">'
        f"{_hidden('destination', group.destination)}{_error_field(group.error)}"
        f'<button type="submit" class="retry-group" data-group="{index}">Retry these…</button></form>'
    )
    jobs = link("/jobs", status="FAILED", destination=group.destination)
    return (
        f'<tr data-group="{index}" data-destination="{escape(group.destination)}">'
        f"<td><code>{escape(group.destination)}</code></td><td class=\"error\">{escape(shown)}</td>"
        f'<td class="jobs"><a href="{jobs}">{group.jobs}</a></td><td>{time_tag(group.last_failed_at)}</td>'
        f"<td>{retry}</td></tr>"
    )


def render_groups(groups: list[FailureGroup], *, retried: int | None, channels: list[str]) -> str:
    message = None if retried is None else f"{_jobs(retried)} queued again."
    if groups:
        head = "<tr><th>destination</th><th>last error</th><th>jobs</th><th>last failed (UTC)</th><th></th></tr>"
        rows = "".join(_group_row(i, group) for i, group in enumerate(groups))
        table = f'<table id="failure-groups">{head}{rows}</table>'
    else:
        table = '<p class="muted" id="no-failures">No failed jobs.</p>'
    options = "".join(f'<option value="{escape(c)}">{escape(c)}</option>' for c in channels)
    by_filter = (
        '<section id="retry-by-filter"><h2>Retry failed jobs by filter</h2>'
        f'<form class="filters" method="get" action="{BASE}/failures/retry">'
        '<label>destination <input name="destination" placeholder="any"></label>'
        f'<label>channel <select name="channel"><option value="">any</option>{options}</select></label>'
        '<label>created from (UTC) <input type="datetime-local" step="1" name="from"></label>'
        '<label>created before (UTC) <input type="datetime-local" step="1" name="to"></label>'
        '<button type="submit">Count them…</button></form></section>'
    )
    return page(
        "failures",
        f"{notice(message)}<main><h2>Failed jobs by destination and error</h2>{table}{by_filter}</main>",
        current="/failures",
    )


def _described(jobs: FailedJobs) -> str:
    parts = [
        ("destination", jobs.destination),
        ("channel", jobs.channel),
        ("created from", _rfc3339(jobs.created_after)),
        ("created before", _rfc3339(jobs.created_before)),
    ]
    items = "".join(f"<li>{name}: <code>{escape(value)}</code></li>" for name, value in parts if value is not None)
    if jobs.error is not None:
        items += f'<li>last error: <div class="error">{escape(jobs.error)}</div></li>'
    return f'<ul id="chosen">{items or "<li>every failed job</li>"}</ul>'


def render_confirm(jobs: FailedJobs, count: int) -> str:
    chosen = _described(jobs)
    if count == 0:
        body = f'<p id="retry-count" data-count="0">No failed job matches:</p>{chosen}'
    else:
        fields = _error_field(jobs.error) + "".join(
            _hidden(name, value)
            for name, value in (
                ("destination", jobs.destination),
                ("channel", jobs.channel),
                ("from", _rfc3339(jobs.created_after)),
                ("to", _rfc3339(jobs.created_before)),
                ("failed_before", _rfc3339(jobs.failed_before)),
            )
        )
        body = (
            f'<p class="warning" id="retry-count" data-count="{count}">This will queue <strong>{count}</strong> '
            f"failed jobs again, each with a fresh attempt budget: those that had failed by "
            f"{time_tag(jobs.failed_before)} UTC and match:</p>{chosen}"
            f'<form id="confirm-retry" method="post" action="{BASE}/failures/retry/run">{fields}'
            f'<button type="submit">Retry {count} jobs</button></form>'
        )
    return page(
        "retry failed jobs",
        f'<main><h2>Retry failed jobs</h2>{body}<p><a href="{BASE}/failures">Back to the failures</a></p></main>',
        current="/failures",
    )
