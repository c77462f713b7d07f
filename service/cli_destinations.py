"""`wjp destinations [set|clear|reset] [KEY]`: the destinations' limits, circuits and waiting jobs, as a table,
and an operator's changes to them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from actors.flow.keys import parse_key
from actors.flow.overview import Destinations, DestinationView
from ledger.destinations import KEEP, MAX_CONCURRENCY, MAX_RATE, MIN_RATE, Limits
from ledger.timestamps import rfc3339

COLUMNS = (
    "key", "concurrency", "rate", "in_flight", "circuit", "failures", "opened_until", "paused_until", "waiting",
)  # fmt: skip
#: Spelling of "back to the default" for a limit on the command line.
DEFAULT = "none"


def _concurrency(text: str) -> int | None:
    if text.strip().lower() == DEFAULT:
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or {DEFAULT!r}") from None
    if not 1 <= value <= MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_CONCURRENCY}")
    return value


def _rate(text: str) -> float | None:
    if text.strip().lower() == DEFAULT:
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or {DEFAULT!r}") from None
    if not MIN_RATE <= value <= MAX_RATE:
        raise argparse.ArgumentTypeError(f"must be {MIN_RATE:g} to {MAX_RATE:g} attempts per second")
    return value


def add_parser(commands: Any, handler: Callable[[argparse.Namespace], int]) -> None:
    """`wjp destinations` and its actions, on the `wjp` command's subparsers."""
    text = "list destinations (limits, circuits, waiting jobs), or change one"
    parser = commands.add_parser("destinations", help=text, description=text)
    parser.set_defaults(handler=handler)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    change = actions.add_parser("set", help=f"override a destination's limits ({DEFAULT!r}: back to the default)")
    change.add_argument("key", metavar="KEY")
    change.add_argument("--concurrency", type=_concurrency, default=KEEP, metavar="N|none")
    change.add_argument("--rate", type=_rate, default=KEEP, metavar="R|none", help="attempts per second")
    actions.add_parser("clear", help="take a destination back to the default limits").add_argument("key", metavar="KEY")
    actions.add_parser("reset", help="close a destination's circuit and lift its pause now").add_argument(
        "key", metavar="KEY"
    )


def run(args: argparse.Namespace, destinations: Destinations, print_line: Callable[[str], None] = print) -> int:
    """Carry out one `wjp destinations` action. Raises `MalformedKey` for a key that is not one, `ValueError` for
    a `set` that changes nothing, and `BrokerUnavailable` when Redis is needed and does not answer."""
    if args.action is None:
        _table(destinations.listing(), print_line)
        return 0
    key = parse_key(args.key)
    if args.action == "set":
        if args.concurrency is KEEP and args.rate is KEEP:
            raise ValueError("give --concurrency and/or --rate (a number, or 'none' for the default)")
        limits = destinations.change(key, concurrency=args.concurrency, rate=args.rate)
        print_line(f"{key}: {_limits(limits, destinations)}; every worker applies it within 5 s")
    elif args.action == "clear":
        had = destinations.clear(key)
        print_line(f"{key}: back to the default limits" if had else f"{key} had no limits of its own")
    else:
        released = destinations.reset(key)
        print_line(f"{key}: circuit closed and pause lifted; {released} deferred jobs sent now")
    return 0


def _limits(limits: Limits, destinations: Destinations) -> str:
    flow = destinations.flow
    concurrency = f"{limits.concurrency}" if limits.concurrency is not None else f"{flow.concurrency} (default)"
    rate = limits.rate if limits.rate is not None else flow.rate
    shown = "unlimited" if rate is None else f"{rate:g}/s"
    return f"concurrency {concurrency}, rate {shown}{' (default)' if limits.rate is None else ''}"


def _row(view: DestinationView) -> tuple[str, ...]:
    return (
        view.key,
        f"{view.concurrency}{'*' if view.override.concurrency is not None else ''}",
        ("-" if view.rate is None else f"{view.rate:g}") + ("*" if view.override.rate is not None else ""),
        str(view.in_flight),
        view.circuit,
        str(view.consecutive_failures),
        rfc3339(view.opened_until) or "-",
        rfc3339(view.paused_until) or "-",
        str(view.waiting),
    )


def _table(views: list[DestinationView], print_line: Callable[[str], None]) -> None:
    if not views:
        print_line("No destination has limits set, a circuit not closed, or jobs in flight or waiting.")
        return
    rows = [COLUMNS, *(_row(view) for view in views)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        print_line("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print_line("* set by an operator; rate '-' is unlimited")
