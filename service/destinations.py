"""GET /internal/destinations[/{key}] and PUT /internal/destinations/{key}: limits, circuits and waiting jobs."""

from __future__ import annotations

import math
from typing import Any

import falcon

from actors.broker import BrokerUnavailable
from actors.flow.keys import MalformedKey, parse_key
from actors.flow.overview import Destinations, DestinationView
from ledger.destinations import KEEP, MAX_CONCURRENCY, MAX_RATE, MIN_RATE
from ledger.timestamps import rfc3339
from service.bodies import read_json_object
from service.errors import RETRY_AFTER, ApiError
from service.validation import json_type

LIMITS = ("concurrency", "rate")


def destination_document(view: DestinationView) -> dict[str, Any]:
    return {
        "key": view.key,
        "concurrency": view.concurrency,
        "rate": view.rate,
        "in_flight": view.in_flight,
        "circuit": view.circuit,
        "consecutive_failures": view.consecutive_failures,
        "opened_until": rfc3339(view.opened_until),
        "paused_until": rfc3339(view.paused_until),
        "waiting": view.waiting,
    }


def _key(raw: str) -> str:
    try:
        return parse_key(raw)
    except MalformedKey as exc:
        raise ApiError(falcon.HTTP_404, "not_found", f"No destination has this key: {exc}.") from None


def _redis_unavailable(what: str) -> ApiError:
    return ApiError(
        falcon.HTTP_503,
        "redis_unavailable",
        f"{what} Redis, which holds the destinations' circuits and slots, cannot be reached; try again shortly.",
        headers={"Retry-After": str(RETRY_AFTER)},
    )


def parse_limits(body: dict[str, Any]) -> dict[str, Any]:
    """The limits a PUT body changes: a number sets one, null takes it back to the default, a missing one stays.

    Raises:
        ApiError: 400 `validation_error` naming each bad field.
    """
    problems = [(name, "is not a limit of a destination") for name in sorted(set(body) - set(LIMITS))]
    changes: dict[str, Any] = {}
    concurrency = body.get("concurrency", KEEP)
    if concurrency is None or concurrency is KEEP:
        changes["concurrency"] = concurrency
    elif isinstance(concurrency, bool) or not isinstance(concurrency, int):
        problems.append(("concurrency", f"must be a whole number or null, got {json_type(concurrency)}"))
    elif not 1 <= concurrency <= MAX_CONCURRENCY:
        problems.append(("concurrency", f"must be 1 to {MAX_CONCURRENCY}, got {concurrency}"))
    else:
        changes["concurrency"] = concurrency
    rate = body.get("rate", KEEP)
    if rate is None or rate is KEEP:
        changes["rate"] = rate
    elif isinstance(rate, bool) or not isinstance(rate, int | float):
        problems.append(("rate", f"must be a number or null, got {json_type(rate)}"))
    elif not (MIN_RATE <= rate <= MAX_RATE and math.isfinite(rate)):
        problems.append(("rate", f"must be {MIN_RATE:g} to {MAX_RATE:g} attempts per second, got {rate}"))
    else:
        changes["rate"] = float(rate)
    if problems:
        fields = ", ".join(dict.fromkeys(field for field, _ in problems))
        raise ApiError(
            falcon.HTTP_400,
            "validation_error",
            f"The limits are not valid: check {fields}.",
            [{"field": field, "message": message} for field, message in problems],
        )
    return changes


class DestinationCollection:
    """GET /internal/destinations"""

    def __init__(self, destinations: Destinations) -> None:
        self.destinations = destinations

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            views = self.destinations.listing()
        except BrokerUnavailable:
            raise _redis_unavailable("The destinations cannot be listed:") from None
        resp.media = {"data": [destination_document(view) for view in views]}


class DestinationItem:
    """GET and PUT /internal/destinations/{key}"""

    def __init__(self, destinations: Destinations) -> None:
        self.destinations = destinations

    def on_get(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        canonical = _key(key)
        try:
            resp.media = destination_document(self.destinations.one(canonical))
        except BrokerUnavailable:
            raise _redis_unavailable("The destination cannot be read:") from None

    def on_put(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        canonical = _key(key)
        changes = parse_limits(read_json_object(req))
        self.destinations.change(canonical, **changes)
        try:
            resp.media = destination_document(self.destinations.one(canonical))
        except BrokerUnavailable:
            raise _redis_unavailable("The limits were saved, but the destination's state cannot be read:") from None
