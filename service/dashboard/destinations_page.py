"""The destinations' HTML: limits, circuits, pauses and waiting jobs, and on their own page the forms that set a
limit and reset a circuit."""

from __future__ import annotations

from datetime import datetime
from html import escape

from actors.flow.overview import DestinationView
from service.dashboard.layout import BASE, link, notice, page, time_tag

#: What a redirect after a destination's action can say, by its `notice` parameter; {key} is the destination.
NOTICES = {
    "limits": "The limits of {key} are saved; the workers follow them within seconds.",
    "reset": "The circuit of {key} is closed and its pause lifted; {released} deferred jobs were sent now.",
}


def _limit_form(view: DestinationView) -> str:
    # Empty fields keep a limit, as on the form below the table; the current value shows as the placeholder.
    rate = "unlimited" if view.rate is None else f"{view.rate:g}"
    return (
        f'<form class="inline limits" method="post" action="{BASE}/destinations/limits">'
        f'<input type="hidden" name="key" value="{escape(view.key)}">'
        f'<input class="number" name="concurrency" inputmode="numeric" placeholder="{view.concurrency}" '
        'aria-label="concurrency"> '
        f'<input class="number" name="rate" inputmode="decimal" placeholder="{rate}" aria-label="rate per second"> '
        '<button type="submit">Set</button></form>'
    )


def _reset_form(view: DestinationView, now: datetime) -> str:
    paused = view.paused_until is not None and view.paused_until > now
    if view.circuit == "closed" and not paused:
        return ""
    return (
        f'<form class="inline" method="post" action="{BASE}/destinations/reset">'
        f'<input type="hidden" name="key" value="{escape(view.key)}">'
        f'<button type="submit" class="reset" data-destination="{escape(view.key)}">Reset circuit</button></form>'
    )


def destinations_table(views: list[DestinationView] | None, now: datetime, *, actions: bool) -> str:
    """The destinations as a table (with their forms when `actions`), or why there is none."""
    if views is None:
        return '<p class="muted">Redis cannot be reached: limits and circuits are unknown.</p>'
    if not views:
        return '<p class="muted">Every destination is at its defaults, with nothing waiting.</p>'

    def until(moment: datetime | None) -> str:
        return time_tag(moment) if moment is not None and moment > now else ""

    def waiting(view: DestinationView) -> str:
        return f'<a href="{link("/jobs", destination=view.key)}">{view.waiting}</a>' if view.waiting else "0"

    rows = "".join(
        f'<tr data-destination="{escape(view.key)}"><td><code>{escape(view.key)}</code></td>'
        f"<td>{view.concurrency}{' *' if view.override.concurrency is not None else ''}</td>"
        f"<td>{'unlimited' if view.rate is None else f'{view.rate:g}/s'}"
        f"{' *' if view.override.rate is not None else ''}</td><td>{view.in_flight}</td>"
        f'<td class="circuit" data-circuit="{view.circuit}">{view.circuit.replace("_", "-")}</td>'
        f"<td>{view.consecutive_failures}</td><td>{until(view.opened_until)}</td><td>{until(view.paused_until)}</td>"
        f"<td>{waiting(view)}</td>"
        + (f"<td>{_limit_form(view)}</td><td>{_reset_form(view, now)}</td>" if actions else "")
        + "</tr>"
        for view in views
    )
    head = (
        "<tr><th>destination</th><th>concurrency</th><th>rate</th><th>in flight</th><th>circuit</th>"
        "<th>failures</th><th>open until</th><th>paused until</th><th>waiting</th>"
        + ("<th>set limits (concurrency, per second)</th><th></th>" if actions else "")
        + "</tr>"
    )
    return (
        f'<table id="destination-list">{head}{rows}</table>'
        '<p class="muted">* limit set by an operator (here, or <code>wjp destinations set</code>)</p>'
    )


def render(views: list[DestinationView] | None, now: datetime, message: str | None) -> str:
    other = (
        '<section id="set-limits"><h2>Set the limits of any destination</h2>'
        f'<form class="filters" method="post" action="{BASE}/destinations/limits">'
        '<label>destination <input name="key" required placeholder="webhook:example.com:443"></label>'
        '<label>concurrency <input class="number" name="concurrency" inputmode="numeric" placeholder="keep"></label>'
        '<label>per second <input class="number" name="rate" inputmode="decimal" placeholder="keep"></label>'
        '<button type="submit">Set</button></form>'
        '<p class="muted">An empty field keeps that limit; <code>default</code> takes it back to the default.</p>'
        "</section>"
    )
    return page(
        "destinations",
        f"{notice(message)}<main><h2>Destinations</h2>"
        '<p class="muted">Those with limits set, a circuit not closed, a pause, or jobs in flight or waiting.</p>'
        f'<section id="destinations">{destinations_table(views, now, actions=True)}</section>{other}</main>',
        current="/destinations",
    )
