"""Charts drawn on the server as inline SVG: no script, no build step, nothing fetched. Colours and sizes are
attributes, not styles, so the pages' Content-Security-Policy needs nothing more."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

WIDTH, HEIGHT = 720, 220
#: Room for the axes' labels: left, right, top, bottom.
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 12, 28


@dataclass(frozen=True)
class Series:
    name: str
    colour: str
    #: One value per point; None leaves a gap.
    values: list[float | None]


def _nice_top(highest: float) -> float:
    """A round number at or above `highest` for the y axis: 1, 2 or 5 times a power of ten."""
    if highest <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(highest))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= highest)


def _frame(chart_id: str, title: str, top: float, unit: str, starts: list[datetime], plot: str, legend: str) -> str:
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    grid = []
    # Five steps: a top of 1, 2 or 5 times a power of ten gives round labels at each.
    for i in range(6):
        value = top * i / 5
        y = TOP + inner_h - inner_h * i / 5
        label = f"{value:g}{unit}" if value < 100 else f"{value:,.0f}{unit}"
        grid.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{escape(label)}</text>'
        )
    ticks = []
    step = max(1, len(starts) // 6)
    for i in range(0, len(starts), step):
        x = LEFT + inner_w * (i + 0.5) / max(len(starts), 1)
        ticks.append(
            f'<text x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="middle" fill="#555">'
            f"{starts[i].astimezone(UTC).strftime('%H:%M')}</text>"
        )
    return (
        f'<svg id="{chart_id}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
        f'{"".join(grid)}{"".join(ticks)}{plot}'
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + inner_h}" stroke="#999"/>{legend}</svg>'
    )


def _legend(series: list[Series]) -> str:
    items = []
    for i, one in enumerate(series):
        x = LEFT + 10 + i * 110
        items.append(
            f'<rect x="{x}" y="{TOP}" width="10" height="10" fill="{one.colour}"/>'
            f'<text x="{x + 14}" y="{TOP + 9}" fill="#333">{escape(one.name)}</text>'
        )
    return "".join(items)


def stacked_bars(chart_id: str, title: str, starts: list[datetime], series: list[Series], unit: str = "") -> str:
    """One bar per point, `series` stacked bottom up, each segment titled with its value."""
    totals = [sum(s.values[i] or 0 for s in series) for i in range(len(starts))]
    top = _nice_top(max(totals, default=0))
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = inner_w / max(len(starts), 1)
    bars = []
    for i, start in enumerate(starts):
        base = 0.0
        for one in series:
            value = one.values[i] or 0
            if value:
                height = inner_h * value / top
                y = TOP + inner_h - inner_h * base / top - height
                bars.append(
                    f'<rect x="{LEFT + i * slot + slot * 0.1:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" '
                    f'height="{height:.1f}" fill="{one.colour}" data-minute="{start.strftime("%H:%M")}">'
                    f"<title>{start.astimezone(UTC).strftime('%H:%M')} {escape(one.name)}: {value:g}</title></rect>"
                )
            base += value
    return _frame(chart_id, title, top, unit, starts, "".join(bars), _legend(series))


def lines(chart_id: str, title: str, starts: list[datetime], series: list[Series], unit: str = "") -> str:
    """One polyline per series through its points (a gap where a value is None), each point a titled dot."""
    highest = max((v for s in series for v in s.values if v is not None), default=0.0)
    top = _nice_top(highest)
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = inner_w / max(len(starts), 1)
    drawn = []
    for one in series:
        runs: list[list[str]] = [[]]
        for i, value in enumerate(one.values):
            if value is None:
                runs.append([])
                continue
            x, y = LEFT + slot * (i + 0.5), TOP + inner_h - inner_h * value / top
            runs[-1].append(f"{x:.1f},{y:.1f}")
            drawn.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{one.colour}">'
                f"<title>{starts[i].astimezone(UTC).strftime('%H:%M')} {escape(one.name)}: {value:.3g}{unit}</title>"
                "</circle>"
            )
        drawn.extend(
            f'<polyline fill="none" stroke="{one.colour}" stroke-width="2" points="{" ".join(run)}"/>'
            for run in runs
            if len(run) > 1
        )
    return _frame(chart_id, title, top, unit, starts, "".join(drawn), _legend(series))
