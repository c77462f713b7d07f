"""The overview's HTML (counts, the oldest due job, destinations, recent failures, throughput, lookup), which
refreshes its live part with one small script, and the sign-in page's."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from urllib.parse import urlencode

from actors.flow.overview import DestinationView
from ledger.activity import Minute
from ledger.queries import JobView, QueueStats
from service.dashboard.destinations_page import destinations_table
from service.dashboard.layout import (
    BASE,
    REFRESH_SECONDS,
    SCRIPT,
    jobs_table,
    link,
    notice,
    page,
    seconds_text,
    time_tag,
)


@dataclass(frozen=True)
class Overview:
    now: datetime
    stats: QueueStats
    minutes: list[Minute]
    failures: list[JobView]
    query: str
    #: The jobs the lookup found; None when nothing was looked up.
    found: list[JobView] | None
    #: What the last action did, when the page was reached from one.
    notice: str | None = None
    #: The noteworthy destinations (limits set, circuits not closed, jobs waiting); None: Redis did not answer.
    destinations: list[DestinationView] | None = None


def _counts(stats: QueueStats) -> str:
    cards = "".join(
        f'<a class="count" data-status="{status.value.lower()}" href="{link("/jobs", status=status.value)}">'
        f'<span class="label">{status.value}</span><span class="value">{count}</span></a>'
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
        f"<table><tr><th>minute (UTC)</th><th>success</th><th>failed</th><th></th></tr>{rows}</table>"
        f'<p><a href="{BASE}/health">The last hour, charted</a></p></section>'
    )


def _lookup_results(overview: Overview, back: str) -> str:
    if overview.found is None:
        return ""
    title = f"Jobs matching <code>{escape(overview.query)}</code>"
    if not overview.found:
        return f'<section id="lookup-results"><h2>{title}</h2><p class="muted">No job has this id or key.</p></section>'
    table = jobs_table(overview.found, back, table_id="found")
    return f'<section id="lookup-results"><h2>{title}</h2>{table}</section>'


def render(overview: Overview) -> str:
    stats = overview.stats
    back = BASE + (f"?{urlencode({'q': overview.query})}" if overview.query else "")
    failures = (
        jobs_table(overview.failures, back, table_id="failure-list")
        if overview.failures
        else '<p class="muted">No failed jobs.</p>'
    )
    live = (
        f'<main id="live">{notice(overview.notice)}{_counts(stats)}'
        f'<p id="oldest-due">Oldest due job has waited <strong>{seconds_text(stats.oldest_due_age)}</strong>'
        f" · mean attempts of successful jobs {stats.avg_attempts_success:g}</p>"
        f"{_lookup_results(overview, back)}"
        f'<section id="destinations"><h2>Destinations</h2>'
        f"{destinations_table(overview.destinations, overview.now, actions=False)}</section>"
        f'<section id="failures"><h2>Recent failures</h2>{failures}'
        f'<p><a href="{BASE}/failures">Failures grouped by destination and error</a></p></section>'
        f"{_throughput(overview.minutes)}</main>"
    )
    return page(
        "queue",
        f'<p id="updated" class="muted">Updated {time_tag(overview.now)} UTC · refreshes every {REFRESH_SECONDS} s</p>'
        f'<form id="lookup" method="get" action="{BASE}" role="search">'
        '<label for="q">Find a job by id or idempotency key</label> '
        f'<input id="q" name="q" maxlength="255" required value="{escape(overview.query)}"> '
        '<button type="submit">Find</button></form>'
        f"{live}<script>{SCRIPT}</script>",
        current="",
        refresh=True,
    )


def render_login(*, failed: bool) -> str:
    problem = '<p class="notice" id="login-failed" role="alert">That is not the admin token.</p>' if failed else ""
    return page(
        "sign in",
        "<p>The dashboard needs the admin token (WJP_ADMIN_TOKEN).</p>"
        f'{problem}<form id="login" method="post" action="{BASE}/login">'
        '<label for="token">Admin token</label> '
        '<input id="token" name="token" type="password" autocomplete="current-password" required autofocus> '
        '<button type="submit">Sign in</button></form>',
        current=None,
    )
