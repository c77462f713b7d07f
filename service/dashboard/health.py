"""GET /internal/dashboard/health: the last hour's throughput per minute by outcome and POST → SUCCESS latency
(p50, p99), charted on the server."""

from __future__ import annotations

from typing import Any

import falcon

from ledger import health
from ledger.activity import Minute
from ledger.health import Latency
from ledger.timestamps import utcnow
from service.dashboard import charts
from service.dashboard.charts import Series
from service.dashboard.layout import answer, page, seconds_text, time_tag
from service.resources import Context

#: Minutes charted: both statements read only the completion times of this window.
HEALTH_MINUTES = 60
SUCCESS_COLOUR, FAILED_COLOUR, P50_COLOUR, P99_COLOUR = "#2a7", "#c33", "#36c", "#e80"


class HealthPage:
    """GET /internal/dashboard/health"""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        now = utcnow()

        def read(conn: Any) -> tuple[list[Minute], Latency]:
            return (
                health.finished_per_minute(conn, now=now, minutes=HEALTH_MINUTES),
                health.success_latency(conn, now=now, minutes=HEALTH_MINUTES),
            )

        minutes, latency = self.ctx.database.run(read)
        answer(resp, render(now, minutes, latency))


def render(now: Any, minutes: list[Minute], latency: Latency) -> str:
    succeeded, failed = sum(m.succeeded for m in minutes), sum(m.failed for m in minutes)
    throughput = charts.stacked_bars(
        "throughput-chart",
        "Jobs finished per minute, by outcome",
        [m.start for m in minutes],
        [
            Series("success", SUCCESS_COLOUR, [m.succeeded for m in minutes]),
            Series("failed", FAILED_COLOUR, [m.failed for m in minutes]),
        ],
    )
    starts = [m.start for m in latency.minutes]
    latency_chart = charts.lines(
        "latency-chart",
        "Seconds from POST to SUCCESS, per minute",
        starts,
        [
            Series("p50", P50_COLOUR, [m.p50 for m in latency.minutes]),
            Series("p99", P99_COLOUR, [m.p99 for m in latency.minutes]),
        ],
        unit=" s",
    )

    def shown(seconds: float | None) -> str:
        return "—" if seconds is None else seconds_text(seconds)

    summary = (
        f'<p id="health-summary">Last {HEALTH_MINUTES} minutes to {time_tag(now)} UTC: '
        f'<strong data-succeeded="{succeeded}">{succeeded}</strong> succeeded, '
        f'<strong data-failed="{failed}">{failed}</strong> failed · POST → SUCCESS '
        f'p50 <strong id="latency-p50">{shown(latency.p50)}</strong>, '
        f'p99 <strong id="latency-p99">{shown(latency.p99)}</strong></p>'
    )
    return page(
        "health",
        f"<main><h2>Health</h2>{summary}"
        f'<section id="throughput"><h2>Throughput per minute by outcome</h2>{throughput}</section>'
        f'<section id="latency"><h2>POST → SUCCESS latency per minute (p50, p99)</h2>{latency_chart}</section>'
        "</main>",
        current="/health",
    )
