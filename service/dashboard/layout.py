"""What every dashboard page shares: its style, headers, navigation, notices, and how times and jobs are written.

Everything shown from the ledger is escaped (a webhook receiver's answer ends up in `last_error`), and the pages'
Content-Security-Policy allows exactly their own style and the overview's one script, by hash. The pages work
without JavaScript: every action is a form.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from html import escape
from urllib.parse import urlencode

import falcon

from ledger.queries import JobView
from ledger.states import Status

#: Characters of an error shown in a table; the whole of it is on the job's page.
ERROR_SHOWN = 300
#: Seconds between the overview's refreshes of its live part.
REFRESH_SECONDS = 5
BASE = "/internal/dashboard"

CSS = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 96rem; padding: 1rem; color: #222; }
h1 { font-size: 1.4rem; margin: 0; } h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
header p, .muted { color: #666; margin: .2rem 0; }
nav { display: flex; gap: 1rem; align-items: center; margin: .5rem 0 1rem; border-bottom: 1px solid #ddd; }
nav a { padding: .4rem 0; text-decoration: none; color: #0645ad; } nav a[aria-current] { font-weight: bold; }
nav form { margin-left: auto; }
#counts { display: flex; flex-wrap: wrap; gap: .5rem; margin-top: 1rem; }
a.count { color: inherit; text-decoration: none; }
.count { border: 1px solid #ccc; border-radius: 6px; padding: .5rem .8rem; min-width: 6rem; }
.count .value { display: block; font-size: 1.6rem; font-variant-numeric: tabular-nums; }
.count[data-status=failed] .value, td.circuit[data-circuit=open] { color: #b00020; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; } td code { white-space: nowrap; }
th, td { text-align: left; padding: .3rem .5rem; vertical-align: top; }
tr + tr td { border-top: 1px solid #eee; } .error { color: #b00020; white-space: pre-wrap; word-break: break-word; }
code { font-size: .85em; } meter { width: 12rem; } td time { white-space: nowrap; } td.error { min-width: 16rem; }
.notice { background: #eef6ee; border: 1px solid #9c9; padding: .5rem .8rem; border-radius: 6px; }
.warning { background: #fff4e5; border: 1px solid #e0a040; padding: .5rem .8rem; border-radius: 6px; }
form.inline { display: inline; } input[name=q] { width: 24rem; max-width: 100%; }
form.filters { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: end; }
form.filters label { display: flex; flex-direction: column; font-size: .85rem; color: #555; }
input.number { width: 6rem; }
ol.timeline { list-style: none; padding: 0; border-left: 3px solid #ccc; margin-left: .5rem; }
ol.timeline li { padding: .3rem 0 .6rem 1rem; }
ol.timeline li[data-outcome=success] { border-left: 3px solid #2a7; margin-left: -3px; }
dl.fields { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; } dl.fields dd { margin: 0; }
svg.chart { width: 100%; max-width: 60rem; height: auto; font: 11px system-ui, sans-serif; }
"""

SCRIPT = (
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
        f"default-src 'none'; style-src {_sha256(CSS)}; script-src {_sha256(SCRIPT)}; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}

#: The pages in the navigation: (path under BASE, title).
PAGES = (("", "Overview"), ("/jobs", "Jobs"), ("/failures", "Failures"), ("/destinations", "Destinations"),
         ("/health", "Health"))  # fmt: skip


def answer(resp: falcon.Response, page: str) -> None:
    resp.content_type = falcon.MEDIA_HTML
    resp.set_headers(HEADERS)
    resp.text = page


def link(path: str, **params: object) -> str:
    """An escaped href to a dashboard page, leaving out empty parameters."""
    given = {name: str(value) for name, value in params.items() if value not in (None, "")}
    return escape(BASE + path + (f"?{urlencode(given)}" if given else ""))


def time_tag(moment: datetime | None) -> str:
    if moment is None:
        return ""
    text = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f'<time datetime="{escape(moment.astimezone(UTC).isoformat())}">{text}</time>'


def seconds_text(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def notice(text: str | None, *, css: str = "notice") -> str:
    return f'<p class="{css}" id="notice" role="status">{escape(text)}</p>' if text else ""


def retry_form(job: JobView, back: str) -> str:
    """The Retry button of a FAILED job; `back` is the page to return to (a dashboard path with its query)."""
    if job.status is not Status.FAILED:
        return ""
    return (
        f'<form class="inline" method="post" action="{BASE}/jobs/{job.id}/retry">'
        f'<input type="hidden" name="back" value="{escape(back)}">'
        f'<button type="submit" class="retry" data-job="{job.id}">Retry</button></form>'
    )


def _shortened(text: str | None, length: int) -> str:
    text = text or ""
    return escape(text if len(text) <= length else text[:length] + "…")


def jobs_table(jobs: list[JobView], back: str, *, table_id: str) -> str:
    """Jobs as table rows, each linked to its page (by the random end of its id, whole on hover)."""
    rows = "".join(
        f'<tr data-job="{job.id}"><td><a href="{link(f"/jobs/{job.id}")}" title="{job.id}">'
        f"<code>{job.id.hex[-12:]}</code></a></td>"
        f'<td class="status">{job.status.value}</td><td>{escape(job.channel)}</td>'
        f"<td><code>{escape(job.destination)}</code></td><td>{_shortened(job.recipient, 40)}</td>"
        f"<td>{_shortened(job.idempotency_key, 40)}</td><td>{job.attempts}/{job.max_attempts}</td>"
        f"<td>{time_tag(job.created_at)}</td>"
        f'<td class="error">{_shortened(job.last_error, ERROR_SHOWN)}</td><td>{retry_form(job, back)}</td></tr>'
        for job in jobs
    )
    head = (
        "<tr><th>job</th><th>status</th><th>channel</th><th>destination</th><th>recipient</th>"
        "<th>idempotency key</th><th>attempts</th><th>created (UTC)</th><th>last error</th><th></th></tr>"
    )
    return f'<table id="{table_id}">{head}{rows}</table>'


def page(title: str, body: str, *, current: str | None, refresh: bool = False) -> str:
    """A whole page: navigation (when signed in: `current` is the page's path under BASE) and `body`."""
    nav = ""
    if current is not None:
        links = "".join(
            f'<a href="{BASE}{path}"{" aria-current=page" if path == current else ""}>{name}</a>'
            for path, name in PAGES
        )
        nav = (
            f'<nav aria-label="Dashboard">{links}<form id="logout" method="post" action="{BASE}/logout">'
            "<button>Sign out</button></form></nav>"
        )
    # Without JavaScript the overview reloads whole instead, a little less often.
    fallback = f'<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS * 2}"></noscript>' if refresh else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · worker-job-processor</title><style>{CSS}</style>{fallback}</head>"
        f"<body><header><h1>worker-job-processor</h1></header>{nav}{body}</body></html>"
    )
