"""The dashboard's HTML, rendered on the server: no build step, one small script that refreshes the page.

Everything shown from the ledger is escaped (a webhook receiver's answer ends up in `last_error`), and the
page's Content-Security-Policy allows exactly its own style and script, by hash.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from actors.flow.overview import DestinationView
from ledger.activity import Minute
from ledger.queries import JobView, QueueStats
from ledger.states import Status

#: Seconds between the page's refreshes of its live part.
REFRESH_SECONDS = 5

_CSS = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 1rem; color: #222; }
h1 { font-size: 1.4rem; margin: 0; } h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
header p, .muted { color: #666; margin: .2rem 0; }
#counts { display: flex; flex-wrap: wrap; gap: .5rem; margin-top: 1rem; }
.count { border: 1px solid #ccc; border-radius: 6px; padding: .5rem .8rem; min-width: 6rem; }
.count .value { display: block; font-size: 1.6rem; font-variant-numeric: tabular-nums; }
.count[data-status=failed] .value, td.circuit[data-circuit=open] { color: #b00020; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: .3rem .5rem; }
tr + tr td { border-top: 1px solid #eee; } td.error { color: #b00020; white-space: pre-wrap; word-break: break-word; }
code { font-size: .85em; } meter { width: 12rem; }
.notice { background: #eef6ee; border: 1px solid #9c9; padding: .5rem .8rem; border-radius: 6px; }
form.inline { display: inline; } input[name=q] { width: 24rem; max-width: 100%; }
"""

_SCRIPT = (
    "setInterval(async () => {"
    " try {"
    " const answer = await fetch(location.href, {credentials: 'same-origin'});"
    " if (!answer.ok || answer.redirected) return;"
    " const page = new DOMParser().parseFromString(await answer.text(), 'text/html');"
    " for (const id of ['live', 'updated']) document.getElementById(id).replaceWith(page.getElementById(id));"
    " } catch (error) { /* the next refresh tries again */ }"
    f" }}, {REFRESH_SECONDS * 1000});"
)


def _sha256(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


#: Headers of every dashboard page: only its own style and script run, nothing may frame it, no other site
#: learns its address (a lookup puts a key in it), and nothing is cached (it shows recipients and errors).
HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src {_sha256(_CSS)}; script-src {_sha256(_SCRIPT)}; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}

#: What a redirect after a retry can say, by the `notice` parameter.
NOTICES = {
    "retried": "Job {job} was queued again.",
    "not_failed": "Job {job} is not FAILED; nothing was done.",
    "not_found": "No job has the id {job}.",
}


@dataclass(frozen=True)
class Overview:
    now: datetime
    stats: QueueStats
    minutes: list[Minute]
    failures: list[JobView]
    query: str
    #: The jobs the lookup found; None when nothing was looked up.
    found: list[JobView] | None
    notice: str | None = None
    notice_job: str | None = None
    #: The noteworthy destinations (limits set, circuits not closed, jobs waiting); None: Redis did not answer.
    destinations: list[DestinationView] | None = None


def _time(moment: datetime | None) -> str:
    if moment is None:
        return ""
    text = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f'<time datetime="{escape(moment.astimezone(UTC).isoformat())}">{text}</time>'


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _retry_form(job: JobView, query: str) -> str:
    if job.status is not Status.FAILED:
        return ""
    return (
        f'<form class="inline" method="post" action="/internal/dashboard/jobs/{job.id}/retry">'
        f'<input type="hidden" name="q" value="{escape(query)}">'
        f'<button type="submit" class="retry" data-job="{job.id}">Retry</button></form>'
    )


def _jobs_table(jobs: list[JobView], query: str, *, table_id: str) -> str:
    rows = "".join(
        f'<tr data-job="{job.id}"><td><code>{job.id}</code></td>'
        f'<td class="status">{job.status.value}</td><td>{escape(job.channel)}</td>'
        f"<td>{escape(job.recipient)}</td><td>{escape(job.idempotency_key)}</td>"
        f"<td>{job.attempts}/{job.max_attempts}</td><td>{_time(job.completed_at or job.updated_at)}</td>"
        f'<td class="error">{escape(job.last_error or "")}</td><td>{_retry_form(job, query)}</td></tr>'
        for job in jobs
    )
    head = (
        "<tr><th>job</th><th>status</th><th>channel</th><th>recipient</th><th>idempotency key</th>"
        "<th>attempts</th><th>last change</th><th>last error</th><th></th></tr>"
    )
    return f'<table id="{table_id}">{head}{rows}</table>'


def _counts(stats: QueueStats) -> str:
    cards = "".join(
        f'<div class="count" data-status="{status.value.lower()}"><span class="label">{status.value}</span>'
        f'<span class="value">{count}</span></div>'
        for status, count in stats.counts.items()
    )
    return f'<section id="counts" aria-label="Jobs by status">{cards}</section>'


def _throughput(minutes: list[Minute]) -> str:
    top = max([m.succeeded + m.failed for m in minutes] + [1])
    rows = "".join(
        f"<tr><td>{m.start.astimezone(UTC).strftime('%H:%M')}</td><td>{m.succeeded}</td><td>{m.failed}</td>"
        f'<td><meter min="0" max="{top}" value="{m.succeeded + m.failed}"></meter></td></tr>'
        for m in minutes
    )
    total = sum(m.succeeded + m.failed for m in minutes)
    return (
        f'<section id="throughput"><h2>Finished per minute, last {len(minutes)} minutes ({total} jobs)</h2>'
        f"<table><tr><th>minute (UTC)</th><th>success</th><th>failed</th><th></th></tr>{rows}</table></section>"
    )


def _destinations(views: list[DestinationView] | None, now: datetime) -> str:
    title = '<section id="destinations"><h2>Destinations</h2>'
    if views is None:
        return f'{title}<p class="muted">Redis cannot be reached: limits and circuits are unknown.</p></section>'
    if not views:
        return f'{title}<p class="muted">Every destination is at its defaults, with nothing waiting.</p></section>'

    def until(moment: datetime | None) -> str:
        return _time(moment) if moment is not None and moment > now else ""

    rows = "".join(
        f'<tr data-destination="{escape(view.key)}"><td><code>{escape(view.key)}</code></td>'
        f"<td>{view.concurrency}{' *' if view.override.concurrency is not None else ''}</td>"
        f"<td>{'unlimited' if view.rate is None else f'{view.rate:g}/s'}"
        f"{' *' if view.override.rate is not None else ''}</td><td>{view.in_flight}</td>"
        f'<td class="circuit" data-circuit="{view.circuit}">{view.circuit.replace("_", "-")}</td>'
        f"<td>{view.consecutive_failures}</td><td>{until(view.opened_until)}</td><td>{until(view.paused_until)}</td>"
        f"<td>{view.waiting}</td></tr>"
        for view in views
    )
    head = (
        "<tr><th>destination</th><th>concurrency</th><th>rate</th><th>in flight</th><th>circuit</th>"
        "<th>failures</th><th>open until</th><th>paused until</th><th>waiting</th></tr>"
    )
    return (
        f'{title}<table id="destination-list">{head}{rows}</table>'
        '<p class="muted">* limit set by an operator (<code>wjp destinations set</code>)</p></section>'
    )


def _notice(overview: Overview) -> str:
    template = NOTICES.get(overview.notice or "")
    if template is None or overview.notice_job is None:
        return ""
    try:
        job = str(uuid.UUID(overview.notice_job))
    except ValueError:
        return ""
    return f'<p class="notice" id="notice" role="status">{escape(template.format(job=job))}</p>'


def _lookup_results(overview: Overview) -> str:
    if overview.found is None:
        return ""
    title = f"Jobs matching <code>{escape(overview.query)}</code>"
    if not overview.found:
        return f'<section id="lookup-results"><h2>{title}</h2><p class="muted">No job has this id or key.</p></section>'
    table = _jobs_table(overview.found, overview.query, table_id="found")
    return f'<section id="lookup-results"><h2>{title}</h2>{table}</section>'


def render(overview: Overview) -> str:
    stats = overview.stats
    failures = (
        _jobs_table(overview.failures, overview.query, table_id="failure-list")
        if overview.failures
        else '<p class="muted">No failed jobs.</p>'
    )
    live = (
        f'<main id="live">{_notice(overview)}{_counts(stats)}'
        f'<p id="oldest-due">Oldest due job has waited <strong>{_duration(stats.oldest_due_age)}</strong>'
        f" · mean attempts of successful jobs {stats.avg_attempts_success:g}</p>"
        f'{_lookup_results(overview)}{_destinations(overview.destinations, overview.now)}'
        f'<section id="failures"><h2>Recent failures</h2>{failures}</section>'
        f"{_throughput(overview.minutes)}</main>"
    )
    return _page(
        "worker-job-processor · queue",
        "<header><h1>worker-job-processor</h1>"
        f'<p id="updated">Updated {_time(overview.now)} UTC · refreshes every {REFRESH_SECONDS} s</p>'
        '<form id="logout" method="post" action="/internal/dashboard/logout"><button>Sign out</button></form></header>'
        '<form id="lookup" method="get" action="/internal/dashboard" role="search">'
        '<label for="q">Find a job by id or idempotency key</label> '
        f'<input id="q" name="q" maxlength="255" required value="{escape(overview.query)}"> '
        '<button type="submit">Find</button></form>'
        f"{live}<script>{_SCRIPT}</script>",
        refresh=True,
    )


def render_login(*, failed: bool) -> str:
    problem = '<p class="notice" id="login-failed" role="alert">That is not the admin token.</p>' if failed else ""
    return _page(
        "worker-job-processor · sign in",
        "<header><h1>worker-job-processor</h1><p>The dashboard needs the admin token (WJP_ADMIN_TOKEN).</p>"
        f'</header>{problem}<form id="login" method="post" action="/internal/dashboard/login">'
        '<label for="token">Admin token</label> '
        '<input id="token" name="token" type="password" autocomplete="current-password" required autofocus> '
        '<button type="submit">Sign in</button></form>',
        refresh=False,
    )


def _page(title: str, body: str, *, refresh: bool) -> str:
    # Without JavaScript the whole page reloads instead, a little less often.
    fallback = f'<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS * 2}"></noscript>' if refresh else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style>{fallback}</head><body>{body}</body></html>"
    )
