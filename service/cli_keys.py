"""`wjp api-key create|list|revoke|set-rate`: producer API keys and their rates. A refusal raises ValueError with
the one line `wjp` prints."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import Any

from ledger import api_keys
from ledger.database import Database
from ledger.timestamps import rfc3339, utcnow

_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
RATE_HELP = "notifications per second (default: WJP_API_KEY_RATE, unset = unlimited)"


def _key_name(text: str) -> str:
    if not _KEY_NAME.match(text):
        raise argparse.ArgumentTypeError(
            "use 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return text


def _key_rate(text: str | None) -> float | None:
    """Notifications per second above 0, or `none` (or no --rate): the key follows WJP_API_KEY_RATE."""
    if text is None or text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"rate {text!r} is not a number of notifications per second above 0, nor 'none'")
    return value


def _rate_text(rate: float | None) -> str:
    return "default" if rate is None else f"{rate:g}/s"


def add_parser(commands: Any, handler: Callable[[argparse.Namespace], int]) -> None:
    """`wjp api-key` and its actions, on the `wjp` parser's subcommands."""
    help_text = "create, list, revoke or rate-limit producer API keys"
    api_key = commands.add_parser("api-key", help=help_text, description=help_text)
    api_key.set_defaults(handler=handler)
    actions = api_key.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="a new key, printed once on the last line")
    create.add_argument("name", type=_key_name)
    create.add_argument("--rate", metavar="R", help=RATE_HELP)
    actions.add_parser("list", help="every key (never the keys themselves)")
    actions.add_parser("revoke", help="stop a key from working").add_argument("name")
    set_rate = actions.add_parser("set-rate", help="a key's rate, or 'none' to follow WJP_API_KEY_RATE")
    set_rate.add_argument("name")
    set_rate.add_argument("rate", metavar="R|none", help=RATE_HELP)


def run(args: argparse.Namespace, database: Database) -> int:
    if args.action == "create":
        rate = _key_rate(args.rate)
        try:
            key, secret = database.run(
                lambda conn: api_keys.create(conn, args.name, now=utcnow(), rate=rate), transaction=True
            )
        except api_keys.KeyNameTaken as exc:
            raise ValueError(f"{exc}; choose another name") from None
        print(f"API key {key.name!r} created (scope {key.id}, rate {_rate_text(key.rate)}).")
        print("It is shown only this once; store it now:")
        print(secret)
        return 0
    if args.action == "revoke":
        if not database.run(lambda conn: api_keys.revoke(conn, args.name, now=utcnow()), transaction=True):
            raise ValueError(f"no active API key is named {args.name!r}")
        print(f"API key {args.name!r} revoked; it stops working within seconds.")
        return 0
    if args.action == "set-rate":
        rate = _key_rate(args.rate)
        if not database.run(lambda conn: api_keys.set_rate(conn, args.name, rate), transaction=True):
            raise ValueError(f"no active API key is named {args.name!r}")
        print(f"API key {args.name!r} now has rate {_rate_text(rate)}; running APIs follow within seconds.")
        return 0
    keys = database.run(api_keys.list_keys)
    rows = [("name", "scope", "created", "rate", "revoked")]
    rows += [
        (k.name, k.id, rfc3339(k.created_at) or "", _rate_text(k.rate), rfc3339(k.revoked_at) or "-") for k in keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0
